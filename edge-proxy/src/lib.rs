//! The Tollgate edge proxy: the data plane, configured only by the control plane over xDS.
//!
//! The finished proxy will accept connections on the listeners it is sent (LDS). It will match
//! each request against the route table (RDS) and run the route's filters. Then it will forward
//! to a cluster's endpoints (CDS/EDS). It will hold the whole configuration in one immutable
//! snapshot that is swapped atomically.
//!
//! So far the validation layer exists ([`config`]): every xDS resource type the control plane
//! serves (LDS, RDS, CDS, EDS, SDS) becomes a validated domain type with Envoy's semantics, or
//! an error fit for a NACK that names the offending field. The xDS client ([`xds`]) keeps a
//! Delta ADS stream to the control plane and publishes each complete, validated state as one
//! [`snapshot::Snapshot`]; there is no listener socket or upstream connection yet.

pub mod config;
pub mod snapshot;
pub mod xds;
