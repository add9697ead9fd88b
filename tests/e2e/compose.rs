//! `compose.yaml` run as local processes: there is no container engine here, so this test
//! reads the compose file and starts each service the way it says (the same binaries, flags,
//! environment and mounted config files), with every `service:port` and `0.0.0.0:port` turned
//! into `127.0.0.1:<a free port>`. A change to `compose.yaml` or `deploy/` that breaks the
//! fleet breaks this test.
//!
//! What differs: processes on one host share its ports, so each edge proxy gets its own node
//! cluster, and the fleet's listener (for node cluster `edge`) becomes one listener per proxy,
//! on that proxy's own port; named volumes are temp dirs; and `--redis-timeout` is raised to
//! 2 s, because this host runs other tests at the same time and a check slower than the
//! production 5 ms would fail open and let an extra request through.
//!
//! Then traffic: through HAProxy the fleet lets 10 requests of the free tier's key through and
//! refuses the 11th with 429, spreading requests over both demo upstreams and all three
//! proxies; the Envoy sidecar, counting in the same Redis through the control plane, refuses
//! the spent key too and lets the pro tier's key through.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;
use support::haproxy::{Haproxy, require_haproxy};
use support::metrics::Samples;
use support::process::{ChildProcess, tollgate_bin, workspace_root};
use support::redis::RedisServer;
use support::{Upstream, eventually, free_port};

use crate::fixtures::CONVERGE;

const FREE_KEY: &str = "demo-key-alice-0123456789abcdef";
const PRO_KEY: &str = "demo-key-bob-fedcba9876543210";
/// The free tier's quota in `deploy/fleet.yaml`.
const FREE_QUOTA: usize = 10;

#[derive(Debug, Deserialize)]
struct Compose {
    services: BTreeMap<String, Service>,
}

#[derive(Debug, Deserialize)]
struct Service {
    #[serde(default)]
    image: String,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    volumes: Vec<String>,
}

impl Service {
    fn is(&self, program: &str) -> bool {
        self.command.first().is_some_and(|c| c == program)
    }

    /// `(host path, container path)` of each mount: `./x` relative to the repository, a named
    /// volume as a new directory under `scratch`.
    fn mounts(&self, scratch: &Path) -> Vec<(PathBuf, String)> {
        self.volumes
            .iter()
            .map(|volume| {
                let mut parts = volume.split(':');
                let source = parts.next().unwrap_or_default();
                let target = parts.next().unwrap_or_default().to_owned();
                let host = match source.strip_prefix("./") {
                    Some(relative) => workspace_root().join(relative),
                    None => {
                        let dir = scratch.join(source);
                        std::fs::create_dir_all(&dir).expect("a named volume's directory");
                        dir
                    }
                };
                (host, target)
            })
            .collect()
    }

    /// The environment, `${VAR:-default}` taking the default.
    fn env(&self) -> Vec<(String, String)> {
        self.environment
            .iter()
            .map(|(name, value)| {
                let value = match value
                    .strip_prefix("${")
                    .and_then(|v| v.strip_suffix('}'))
                    .and_then(|v| v.split_once(":-"))
                {
                    Some((_, default)) => default.to_owned(),
                    None => value.clone(),
                };
                (name.clone(), value)
            })
            .collect()
    }
}

/// The compose network on loopback: a local port for each `(service, container port)`.
struct Network {
    services: Vec<String>,
    ports: HashMap<(String, u16), u16>,
}

impl Network {
    fn port(&mut self, service: &str, port: u16) -> u16 {
        *self
            .ports
            .entry((service.to_owned(), port))
            .or_insert_with(free_port)
    }

    /// `text` with each `<service>:<port>` and `0.0.0.0:<port>` (the latter `own`'s) as
    /// `127.0.0.1:<local port>`.
    fn rewrite(&mut self, text: &str, own: &str) -> String {
        let mut hosts: Vec<String> = self.services.clone();
        hosts.push("0.0.0.0".to_owned());
        // Longest first, so `edge-1` is never read as a prefix of a longer name.
        hosts.sort_by_key(|h| std::cmp::Reverse(h.len()));
        let mut out = String::new();
        let mut rest = text;
        'scan: while !rest.is_empty() {
            let at_boundary = out
                .chars()
                .last()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '.'));
            if at_boundary {
                for host in &hosts {
                    let Some(after) = rest
                        .strip_prefix(host.as_str())
                        .and_then(|r| r.strip_prefix(':'))
                    else {
                        continue;
                    };
                    let digits = after.bytes().take_while(u8::is_ascii_digit).count();
                    let Ok(port) = after[..digits].parse::<u16>() else {
                        continue;
                    };
                    let service = if host == "0.0.0.0" {
                        own
                    } else {
                        host.as_str()
                    };
                    let local = self.port(service, port);
                    out.push_str(&format!("127.0.0.1:{local}"));
                    rest = &after[digits..];
                    continue 'scan;
                }
            }
            let c = rest.chars().next().expect("not empty");
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
        out
    }
}

/// The args of `service`'s command after the program, rewritten for loopback and with mount
/// paths replaced by the host paths.
fn local_args(
    network: &mut Network,
    name: &str,
    service: &Service,
    mounts: &[(PathBuf, String)],
) -> Vec<String> {
    service.command[1..]
        .iter()
        .map(|arg| {
            if arg.starts_with("--redis-timeout=") {
                return "--redis-timeout=2s".to_owned();
            }
            let mut arg = network.rewrite(arg, name);
            for (host, target) in mounts {
                arg = arg.replace(&format!("{target}/"), &format!("{}/", host.display()));
            }
            arg
        })
        .collect()
}

fn spawn(name: &str, program: &Path, args: &[String], env: &[(String, String)]) -> ChildProcess {
    let mut cmd = Command::new(program);
    cmd.args(args).envs(env.iter().map(|(k, v)| (k, v)));
    ChildProcess::spawn(name, cmd).unwrap_or_else(|e| panic!("starting {name}: {e:#}"))
}

async fn try_get(url: &str, key: &str) -> anyhow::Result<support::HttpResponse> {
    support::client::request(reqwest::Method::GET, url, None, &[("x-api-key", key)], None).await
}

async fn get(url: &str, key: &str) -> support::HttpResponse {
    try_get(url, key)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_yaml_runs_as_local_processes() {
    let Some(envoy_bin) = support::require_envoy() else {
        return;
    };
    if require_haproxy().is_none() {
        return;
    }
    if !support::redis::require_redis() {
        return;
    }
    let root = workspace_root();
    let text = std::fs::read_to_string(root.join("compose.yaml")).expect("compose.yaml");
    let compose: Compose = serde_saphyr::from_str(&text).expect("compose.yaml parses");
    let scratch = tempfile::tempdir().expect("scratch dir");
    let mut network = Network {
        services: compose.services.keys().cloned().collect(),
        ports: HashMap::new(),
    };
    let find = |pred: &dyn Fn(&Service) -> bool| -> Vec<(&String, &Service)> {
        compose.services.iter().filter(|(_, s)| pred(s)).collect()
    };
    let [(redis_name, redis)] = find(&|s| s.image.starts_with("redis"))[..] else {
        panic!("one redis service expected")
    };
    let [(cp_name, cp)] = find(&|s| s.is("control-plane"))[..] else {
        panic!("one control-plane service expected")
    };
    let [(seed_name, seed)] = find(&|s| s.is("apply"))[..] else {
        panic!("one seed service (`tollgate apply`) expected")
    };
    let edges = find(&|s| s.is("edge-proxy"));
    assert_eq!(edges.len(), 3, "three edge proxies");
    let [(haproxy_name, haproxy)] = find(&|s| s.image.starts_with("haproxy"))[..] else {
        panic!("one haproxy service expected")
    };
    let upstreams = find(&|s| s.image.contains("echo"));
    assert_eq!(upstreams.len(), 2, "two demo upstreams");
    let [(envoy_name, envoy)] = find(&|s| s.image.starts_with("envoyproxy/envoy"))[..] else {
        panic!("one envoy service expected")
    };

    // Redis, with the compose file's arguments.
    let redis_port = network.port(redis_name, 6379);
    let redis_args: Vec<&str> = redis.command[1..].iter().map(String::as_str).collect();
    let _redis = RedisServer::start_on("redis", redis_port, &redis_args).expect("redis starts");

    // The demo upstreams, on the port their environment names.
    let mut demo = Vec::new();
    for (name, service) in &upstreams {
        let port: u16 = service.environment["HTTP_PORT"].parse().expect("HTTP_PORT");
        let upstream = Upstream::start(name).await;
        network
            .ports
            .insert(((*name).clone(), port), upstream.port());
        demo.push(upstream);
    }

    // The control plane.
    let mounts = cp.mounts(scratch.path());
    let args = local_args(&mut network, cp_name, cp, &mounts);
    let env = cp.env();
    let admin_port = network.port(cp_name, 9000);
    let _cp = spawn(
        cp_name,
        &tollgate_bin(),
        &[vec!["control-plane".to_owned()], args].concat(),
        &env,
    );
    eventually("the control plane answers", CONVERGE, || async move {
        support::wait::http_ok(&format!("http://127.0.0.1:{admin_port}/healthz")).await
    })
    .await;

    // The seed applies deploy/fleet.yaml, rewritten for loopback: endpoints on the upstreams'
    // local ports, the fleet's listener split into one per proxy.
    let edge_cluster = |service: &Service| {
        service
            .command
            .iter()
            .find_map(|a| a.strip_prefix("--node-cluster="))
            .unwrap_or("edge")
            .to_owned()
    };
    let mut seed_mounts = Vec::new();
    for (host, target) in seed.mounts(scratch.path()) {
        let copy = scratch
            .path()
            .join(format!("seed{}", target.replace('/', "-")));
        std::fs::create_dir_all(&copy).unwrap();
        for entry in std::fs::read_dir(&host).expect("the seed's mount") {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let config: Value =
                    serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap())
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let local =
                    localize_config(config, &mut network, &edges, &edge_cluster, envoy_name);
                // JSON is YAML.
                std::fs::write(copy.join(path.file_name().unwrap()), local.to_string()).unwrap();
            }
        }
        seed_mounts.push((copy, target));
    }
    let seed_args = local_args(&mut network, seed_name, seed, &seed_mounts);
    let output = Command::new(tollgate_bin())
        .args(&seed.command[..1])
        .args(&seed_args)
        .envs(seed.env())
        .output()
        .expect("running the seed");
    assert!(
        output.status.success(),
        "seed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // The edge proxies, each in its own node cluster.
    let mut proxies = Vec::new();
    for (name, service) in &edges {
        let mut args = local_args(&mut network, name, service, &[]);
        for arg in &mut args {
            if arg.starts_with("--node-cluster=") {
                *arg = format!("--node-cluster={name}");
            }
        }
        let admin = network.port(name, 9901);
        let process = spawn(
            name,
            &tollgate_bin(),
            &[vec!["edge-proxy".to_owned()], args].concat(),
            &service.env(),
        );
        proxies.push((name.to_string(), admin, process));
    }

    // As `depends_on` orders them: the proxies serve their listener before HAProxy starts
    // (HAProxy would mark a proxy that is still starting down, and take seconds to return).
    for (name, admin, _) in &proxies {
        let url = format!("http://127.0.0.1:{admin}/ready");
        let listener = network.port(name, 8080);
        eventually(&format!("{name} serves its listener"), CONVERGE, || {
            let url = url.clone();
            async move {
                support::wait::http_ok(&url).await?;
                tokio::net::TcpStream::connect(("127.0.0.1", listener)).await?;
                Ok(())
            }
        })
        .await;
    }

    // HAProxy on its mounted config.
    let (cfg_host, _) = haproxy
        .mounts(scratch.path())
        .into_iter()
        .find(|(host, _)| host.extension().is_some_and(|e| e == "cfg"))
        .expect("haproxy's config mount");
    let cfg = std::fs::read_to_string(&cfg_host).expect("haproxy.cfg");
    let cfg = network.rewrite(&cfg.replace("bind :", "bind 0.0.0.0:"), haproxy_name);
    let haproxy_port = network.port(haproxy_name, 8080);
    let _haproxy = Haproxy::start(&cfg, haproxy_port)
        .await
        .expect("haproxy starts");

    // Envoy on its mounted bootstrap.
    let (bootstrap_host, _) = envoy
        .mounts(scratch.path())
        .into_iter()
        .next()
        .expect("envoy's bootstrap mount");
    let bootstrap = std::fs::read_to_string(&bootstrap_host).expect("envoy.yaml");
    let bootstrap = localize_socket_addresses(&bootstrap, &mut network, envoy_name);
    let bootstrap_path = scratch.path().join("envoy.yaml");
    std::fs::write(&bootstrap_path, bootstrap).unwrap();
    let envoy_admin = network.port(envoy_name, 9901);
    let _envoy = spawn(
        envoy_name,
        &envoy_bin,
        &[
            "-c".to_owned(),
            bootstrap_path.display().to_string(),
            "--disable-hot-restart".to_owned(),
            "--base-id".to_owned(),
            envoy_admin.to_string(),
        ],
        &[],
    );

    let fleet = format!("http://127.0.0.1:{haproxy_port}/hello");
    let envoy_url = format!("http://127.0.0.1:{}/hello", network.port(envoy_name, 10000));
    eventually("envoy serves the sidecar listener", CONVERGE, || {
        let url = envoy_url.clone();
        async move {
            let response = try_get(&url, PRO_KEY).await?;
            anyhow::ensure!(response.status == 200, "status {}", response.status);
            Ok(())
        }
    })
    .await;

    let mut statuses = Vec::new();
    for _ in 0..=FREE_QUOTA {
        statuses.push(get(&fleet, FREE_KEY).await.status);
    }
    let expected: Vec<u16> = (0..=FREE_QUOTA)
        .map(|i| if i < FREE_QUOTA { 200 } else { 429 })
        .collect();
    assert_eq!(statuses, expected, "the free tier's quota through HAProxy");
    for upstream in &demo {
        assert!(
            upstream.request_count() > 0,
            "{} got no request",
            upstream.name()
        );
    }
    for (name, admin, _) in &proxies {
        let scrape = support::get(&format!("http://127.0.0.1:{admin}/metrics"), None)
            .await
            .expect("proxy metrics");
        let samples = Samples::parse(&scrape.body).expect("metrics parse");
        let decided: f64 = samples
            .named("tollgate_proxy_quota_decisions_total")
            .map(|s| s.value)
            .sum();
        assert!(
            decided > 0.0,
            "{name} decided no quota: HAProxy did not reach it"
        );
    }
    // The sidecar shares the counters.
    assert_eq!(
        get(&envoy_url, FREE_KEY).await.status,
        429,
        "envoy, spent key"
    );
    assert_eq!(get(&envoy_url, PRO_KEY).await.status, 200, "envoy, pro key");
}

/// `deploy/fleet.yaml` for loopback: endpoint hosts that are services become 127.0.0.1 on
/// their local ports; a listener for the edge proxies' node cluster becomes one listener per
/// proxy (node cluster = the proxy's service name); other listeners bind 127.0.0.1 on the
/// local port of the service whose node cluster they name (Envoy's, from its bootstrap).
fn localize_config(
    mut config: Value,
    network: &mut Network,
    edges: &[(&String, &Service)],
    edge_cluster: &dyn Fn(&Service) -> String,
    envoy: &str,
) -> Value {
    for cluster in config["clusters"].as_array_mut().into_iter().flatten() {
        for endpoint in cluster["endpoints"].as_array_mut().into_iter().flatten() {
            let host = endpoint["address"].as_str().unwrap_or_default().to_owned();
            if network.services.contains(&host) {
                let port = endpoint["port"].as_u64().expect("port") as u16;
                endpoint["address"] = "127.0.0.1".into();
                endpoint["port"] = network.port(&host, port).into();
            }
        }
    }
    let mut listeners = Vec::new();
    for listener in config["listeners"].as_array().cloned().unwrap_or_default() {
        let port = listener["port"].as_u64().expect("listener port") as u16;
        let cluster = listener["node_cluster"].as_str().unwrap_or_default();
        let fleet: Vec<&&String> = edges
            .iter()
            .filter(|(_, s)| edge_cluster(s) == cluster)
            .map(|(name, _)| name)
            .collect();
        if fleet.is_empty() {
            // Envoy's listener: the Envoy service's port.
            let mut local = listener.clone();
            local["address"] = "127.0.0.1".into();
            local["port"] = network.port(envoy, port).into();
            listeners.push(local);
        } else {
            for name in fleet {
                let mut local = listener.clone();
                local["name"] = format!("{}-{name}", listener["name"].as_str().unwrap()).into();
                local["address"] = "127.0.0.1".into();
                local["port"] = network.port(name, port).into();
                local["node_cluster"] = (*name).clone().into();
                listeners.push(local);
            }
        }
    }
    config["listeners"] = Value::Array(listeners);
    config
}

/// An Envoy bootstrap's `{address: X, port_value: N}` pairs (one per line, as in
/// `deploy/envoy.yaml`) for loopback.
fn localize_socket_addresses(bootstrap: &str, network: &mut Network, own: &str) -> String {
    bootstrap
        .lines()
        .map(|line| {
            // `socket_address: {address: HOST, port_value: PORT}`
            let Some(start) = line.find("{address: ").map(|i| i + 1) else {
                return line.to_owned();
            };
            let rest = &line[start + "address: ".len()..];
            let Some((host, after)) = rest.split_once(", port_value: ") else {
                return line.to_owned();
            };
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            let port: u16 = after[..digits].parse().expect("port_value");
            let local = network.rewrite(&format!("{host}:{port}"), own);
            let (ip, local_port) = local.split_once(':').expect("rewritten");
            format!(
                "{}address: {ip}, port_value: {local_port}{}",
                &line[..start],
                &after[digits..]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
