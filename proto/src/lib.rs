//! Protobuf types shared by the control plane and the edge proxy.
//!
//! Envoy's xDS API (resources, ADS and RLS services) comes from the `envoy-types` crate and is
//! re-exported here, so both sides name one version of it. Tollgate's own extension configs
//! (carried in xDS `Any`s) live in this crate's modules, one per filter.

/// Implements [`prost::Name`] for Tollgate's own messages of one protobuf package.
macro_rules! named {
    ($package:expr; $($message:ident),*) => {$(
        impl prost::Name for $message {
            const NAME: &'static str = stringify!($message);
            const PACKAGE: &'static str = $package;
            fn full_name() -> String {
                format!("{}.{}", $package, Self::NAME)
            }
            fn type_url() -> String {
                format!("type.googleapis.com/{}", Self::full_name())
            }
        }
    )*};
}

pub mod api_key;
pub mod rate_limit;
pub mod transform;

pub use envoy_types;
pub use envoy_types::pb::{envoy, google};

use prost::Name;

/// Packs a message into an `Any` with its canonical type URL.
pub fn pack_any<T: Name>(message: &T) -> google::protobuf::Any {
    google::protobuf::Any {
        type_url: T::type_url(),
        value: message.encode_to_vec(),
    }
}

/// The type URLs of the xDS resource types Tollgate serves.
pub mod type_url {
    /// CDS: `envoy.config.cluster.v3.Cluster`.
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    /// EDS: `envoy.config.endpoint.v3.ClusterLoadAssignment`.
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    /// LDS: `envoy.config.listener.v3.Listener`.
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    /// RDS: `envoy.config.route.v3.RouteConfiguration`.
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    /// SDS: `envoy.extensions.transport_sockets.tls.v3.Secret`.
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_urls_match_the_message_types() {
        use envoy::config::{cluster, endpoint, listener, route};
        assert_eq!(type_url::CLUSTER, cluster::v3::Cluster::type_url());
        assert_eq!(
            type_url::ENDPOINT,
            endpoint::v3::ClusterLoadAssignment::type_url()
        );
        assert_eq!(type_url::LISTENER, listener::v3::Listener::type_url());
        assert_eq!(type_url::ROUTE, route::v3::RouteConfiguration::type_url());
        assert_eq!(
            type_url::SECRET,
            envoy::extensions::transport_sockets::tls::v3::Secret::type_url()
        );
    }
}
