//! The Tollgate control plane.
//!
//! Admin writes land in the [`store`] as one transaction each (a new revision); the change feed
//! wakes the [`xds`] side, which asks the [`cache`] for each node group's resources, built by the
//! pure [`translate`] function, and pushes what changed to every connected proxy over ADS. The
//! [`xds::nodes`] registry records what each proxy acked or rejected. Envoy nodes check API
//! keys through the [`ext_authz`] service, and quotas through the [`rls`] rate-limit service,
//! on the same gRPC port.

pub mod cache;
pub mod ext_authz;
pub mod metrics;
pub mod model;
pub mod rls;
pub mod store;
pub mod translate;
pub mod xds;
