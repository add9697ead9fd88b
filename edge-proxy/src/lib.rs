//! The Tollgate edge proxy: an xDS-driven HTTP data plane.
//!
//! Not built yet: the control plane already serves it (nodes with `user_agent_name:
//! tollgate` get the same listeners, routes and clusters as Envoy), and the proxy itself lands
//! with its own issue. This crate deliberately exports nothing until then.
