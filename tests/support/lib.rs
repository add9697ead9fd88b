//! Support library for Tollgate's end-to-end tests and benches: handles that spawn the real
//! `tollgate` control plane, Envoy, nginx, in-process fake upstreams and an OTLP trace receiver
//! on loopback, wait for them to be ready, kill them on `Drop`, and print their logs when a test
//! fails. Redis comes from the quota engine's test helpers (`redis`).

pub mod client;
pub mod control_plane;
pub mod edge_proxy;
pub mod envoy;
pub mod haproxy;
pub mod jwt;
pub mod metrics;
pub mod nginx;
pub mod otlp;
pub mod ports;
pub mod process;
pub mod redis;
pub mod tools;
pub mod upstream;
pub mod wait;

pub use client::{HttpResponse, get};
pub use control_plane::ControlPlane;
pub use edge_proxy::EdgeProxy;
pub use envoy::{Envoy, EnvoyOptions, require_envoy};
pub use nginx::{Nginx, NginxOptions, require_nginx};
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use ports::free_port;
pub use process::ChildProcess;
pub use upstream::{RecordedRequest, Upstream};
pub use wait::eventually;
