//! Loopback port reservation: hands out free `127.0.0.1` ports, never the same one twice per
//! test process, so parallel tests don't race for a port they both probed as free.
//!
//! Ports come from below the kernel's ephemeral range when it can be read (Linux): a port
//! found by binding `:0` is exactly what the kernel hands the next `bind(:0)` (e.g. an in-process
//! [`crate::Upstream`]) or outgoing connection, so a test could find its control plane's port
//! taken by its own upstream. Elsewhere it falls back to probing `127.0.0.1:0`.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Lowest port handed out from below the ephemeral range.
const LOW_PORT: u16 = 10_000;

/// Ports this process has handed out or is using (like sozu's `e2e` port registry), and the
/// next candidate below the ephemeral range.
static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    taken: BTreeSet::new(),
    next: None,
});

struct Registry {
    taken: BTreeSet<u16>,
    next: Option<u16>,
}

/// Returns a port that was free on `127.0.0.1` a moment ago and has not been returned before.
///
/// Nothing holds the port afterwards, so another process could still take it; within this
/// process, two calls never return the same one.
pub fn free_port() -> u16 {
    let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((low, high)) = reservable_range() {
        let size = u32::from(high - low);
        // Start somewhere depending on pid and time so concurrent test binaries spread out.
        let mut candidate = registry.next.unwrap_or_else(|| {
            let seed = std::process::id()
                ^ SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or_default();
            low + u16::try_from(seed.wrapping_mul(2_654_435_761) % size).unwrap_or(0)
        });
        for _ in 0..size {
            let port = candidate;
            candidate = if candidate + 1 >= high {
                low
            } else {
                candidate + 1
            };
            if !registry.taken.contains(&port) && bindable(port) {
                registry.taken.insert(port);
                registry.next = Some(candidate);
                return port;
            }
        }
    }
    loop {
        let port = probe_any_port();
        if registry.taken.insert(port) {
            return port;
        }
    }
}

/// Records `port` as in use by this process (e.g. an in-process server's), so [`free_port`]
/// never returns it.
pub fn mark_taken(port: u16) {
    let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    registry.taken.insert(port);
}

/// `[LOW_PORT, start of the ephemeral range)` on Linux, if that leaves at least 1000 ports.
fn reservable_range() -> Option<(u16, u16)> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let ephemeral_low: u16 = range.split_whitespace().next()?.parse().ok()?;
    (ephemeral_low >= LOW_PORT + 1000).then_some((LOW_PORT, ephemeral_low))
}

fn bindable(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

fn probe_any_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("binding 127.0.0.1:0 to find a free port");
    listener
        .local_addr()
        .expect("reading the local address of a probe listener")
        .port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_repeats() {
        let mut seen = BTreeSet::new();
        for _ in 0..200 {
            assert!(seen.insert(free_port()));
        }
    }
}
