//! The Tollgate edge proxy: the data plane, configured only by the control plane over xDS.
//!
//! The finished proxy will accept connections on the listeners it is sent (LDS). It will match
//! each request against the route table (RDS) and run the route's filters. Then it will forward
//! to a cluster's endpoints (CDS/EDS). It will hold the whole configuration in one immutable
//! snapshot that is swapped atomically.
//!
//! So far only the first validated piece exists: [`config::route::RouteTable`]. It turns an RDS
//! `RouteConfiguration` into a route table with Envoy's matching semantics, or rejects it with
//! an error fit for a NACK. There is no xDS client, listener or upstream yet.

pub mod config;
