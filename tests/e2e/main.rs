//! End-to-end tests: real `tollgate` processes, real Envoys and recording upstreams, all on
//! free loopback ports. Build the binaries first (`cargo build --bins`; `scripts/test` does).

mod access_log;
mod api_keys;
mod authorization;
mod compose;
mod cors;
mod declarative;
mod dev;
mod edge_proxy;
mod envoy_xds;
mod fixtures;
mod jwt;
mod openapi;
mod parity;
mod proxy_metrics;
mod quotas_envoy;
mod quotas_fleet;
mod tls;
mod tracing;
mod transform;
mod upstreams;
mod websocket;
