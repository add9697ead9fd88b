//! Redis URLs: one string says which topology to connect to.
//!
//! | form | topology |
//! |---|---|
//! | `redis://[user:password@]host:port[/db]` | one server (`rediss://` for TLS; `unix:///path` for a socket) |
//! | `redis+cluster://[user:password@]host:port[,host:port…]` | Redis Cluster, from any of the seed nodes (`rediss+cluster://` for TLS) |
//! | `redis+sentinel://[user:password@]host:port[,host:port…]/master-name[/db]` | the master that Sentinel names (`rediss+sentinel://` for TLS to the master) |
//!
//! Credentials in a Cluster URL apply to every node; in a Sentinel URL they apply to the master,
//! not to the sentinels. Percent-encode special characters in credentials. TLS verifies the
//! server against the system's roots, or against [`super::RedisConfig::tls_ca_pem`].

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo as _};

/// Where the counters live, parsed from a URL.
#[derive(Debug, Clone)]
pub enum RedisTarget {
    /// One Redis server.
    Standalone(ConnectionInfo),
    /// A Redis Cluster, reached through its seed nodes.
    Cluster(Vec<ConnectionInfo>),
    /// A master found through Sentinel.
    Sentinel(SentinelTarget),
}

/// The parts of a `redis+sentinel://` URL.
#[derive(Debug, Clone)]
pub struct SentinelTarget {
    /// The sentinels' addresses.
    pub sentinels: Vec<ConnectionAddr>,
    /// The monitored master's name.
    pub master: String,
    /// Database on the master.
    pub db: i64,
    /// Username for the master.
    pub username: Option<String>,
    /// Password for the master.
    pub password: Option<String>,
    /// TLS to the master.
    pub tls: bool,
}

/// A URL that is not one of the forms above.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("redis url {url}: {reason}")]
pub struct InvalidRedisUrl {
    /// The URL with any password replaced by `***`.
    pub url: String,
    /// What is wrong with it.
    pub reason: String,
}

impl RedisTarget {
    /// Parses one of the URL forms in the module documentation.
    pub fn parse(url: &str) -> Result<Self, InvalidRedisUrl> {
        let invalid = |reason: &str| InvalidRedisUrl {
            url: redact(url),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("missing scheme"))?;
        match scheme {
            "redis" | "rediss" | "unix" | "redis+unix" => {
                let info = url
                    .into_connection_info()
                    .map_err(|e| invalid(&e.to_string()))?;
                Ok(RedisTarget::Standalone(info))
            }
            "redis+cluster" | "rediss+cluster" => {
                let node_scheme = scheme.trim_end_matches("+cluster");
                let (userinfo, hosts, path) = split_authority(rest);
                if !path.trim_matches('/').is_empty() {
                    return Err(invalid("a cluster has no databases: drop the path"));
                }
                let nodes = hosts
                    .split(',')
                    .map(|host| node_info(node_scheme, userinfo, host, "").map_err(|e| invalid(&e)))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(RedisTarget::Cluster(nodes))
            }
            "redis+sentinel" | "rediss+sentinel" => {
                let tls = scheme == "rediss+sentinel";
                let (userinfo, hosts, path) = split_authority(rest);
                let mut segments = path.trim_matches('/').split('/');
                let master = segments.next().unwrap_or_default();
                if master.is_empty() {
                    return Err(invalid("the path must name the master: /master-name[/db]"));
                }
                let db = segments.next().unwrap_or("0");
                if segments.next().is_some() {
                    return Err(invalid("the path must be /master-name[/db]"));
                }
                let mut sentinels = Vec::new();
                let mut first = None;
                for host in hosts.split(',') {
                    // Sentinels are plain TCP; credentials and db apply to the master.
                    let info = node_info("redis", userinfo, host, db).map_err(|e| invalid(&e))?;
                    sentinels.push(info.addr().clone());
                    first.get_or_insert(info);
                }
                let settings = first
                    .as_ref()
                    .map(|info| info.redis_settings().clone())
                    .ok_or_else(|| invalid("no sentinel address"))?;
                Ok(RedisTarget::Sentinel(SentinelTarget {
                    sentinels,
                    master: master.to_owned(),
                    db: settings.db(),
                    username: settings.username().map(str::to_owned),
                    password: settings.password().map(str::to_owned),
                    tls,
                }))
            }
            _ => Err(invalid(
                "unknown scheme; use redis://, rediss://, redis+cluster:// or redis+sentinel://",
            )),
        }
    }

    /// A short description for logs, without credentials.
    pub fn describe(&self) -> String {
        let addr = |a: &ConnectionAddr| a.to_string();
        match self {
            RedisTarget::Standalone(info) => format!("redis {}", addr(info.addr())),
            RedisTarget::Cluster(nodes) => format!(
                "redis cluster {}",
                nodes
                    .iter()
                    .map(|n| addr(n.addr()))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            RedisTarget::Sentinel(s) => format!(
                "redis sentinel {} master {}",
                s.sentinels.iter().map(addr).collect::<Vec<_>>().join(","),
                s.master
            ),
        }
    }
}

/// `[userinfo@]hosts[/path]` → (userinfo, hosts, path).
fn split_authority(rest: &str) -> (&str, &str, &str) {
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (userinfo, hosts, path),
        None => ("", authority, path),
    }
}

/// One node's connection info, parsed by redis-rs from `scheme://[userinfo@]host[/db]`.
fn node_info(scheme: &str, userinfo: &str, host: &str, db: &str) -> Result<ConnectionInfo, String> {
    if host.is_empty() {
        return Err("empty host in the host list".to_owned());
    }
    let at = if userinfo.is_empty() { "" } else { "@" };
    let path = if db.is_empty() {
        String::new()
    } else {
        format!("/{db}")
    };
    format!("{scheme}://{userinfo}{at}{host}{path}")
        .as_str()
        .into_connection_info()
        .map_err(|e| format!("host {host}: {e}"))
}

/// The URL with the password (if any) replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority_end, _) = rest
        .char_indices()
        .find(|&(_, c)| c == '/')
        .unwrap_or((rest.len(), '/'));
    let authority = &rest[..authority_end];
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let redacted = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_owned()
            };
            format!("{scheme}://{redacted}@{hosts}{}", &rest[authority_end..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standalone() {
        let RedisTarget::Standalone(info) =
            RedisTarget::parse("redis://:s3cret@10.0.0.5:6380/2").unwrap()
        else {
            panic!("not standalone")
        };
        assert_eq!(info.addr(), &ConnectionAddr::Tcp("10.0.0.5".into(), 6380));
        assert_eq!(info.redis_settings().db(), 2);
        assert_eq!(info.redis_settings().password(), Some("s3cret"));
        assert!(matches!(
            RedisTarget::parse("rediss://cache.internal:6379").unwrap(),
            RedisTarget::Standalone(info) if matches!(info.addr(), ConnectionAddr::TcpTls { .. })
        ));
    }

    #[test]
    fn cluster() {
        let RedisTarget::Cluster(nodes) =
            RedisTarget::parse("redis+cluster://user:pw@h1:7000,h2:7001,h3").unwrap()
        else {
            panic!("not a cluster")
        };
        let addrs: Vec<_> = nodes.iter().map(|n| n.addr().clone()).collect();
        assert_eq!(
            addrs,
            [
                ConnectionAddr::Tcp("h1".into(), 7000),
                ConnectionAddr::Tcp("h2".into(), 7001),
                ConnectionAddr::Tcp("h3".into(), 6379),
            ]
        );
        assert!(
            nodes
                .iter()
                .all(|n| n.redis_settings().username() == Some("user")
                    && n.redis_settings().password() == Some("pw"))
        );
        assert!(RedisTarget::parse("redis+cluster://h1:7000/3").is_err());
        assert!(RedisTarget::parse("redis+cluster://h1:7000,,h2").is_err());
    }

    #[test]
    fn sentinel() {
        let RedisTarget::Sentinel(s) =
            RedisTarget::parse("redis+sentinel://:pw@s1:26379,s2:26380/mymaster/4").unwrap()
        else {
            panic!("not sentinel")
        };
        assert_eq!(
            s.sentinels,
            [
                ConnectionAddr::Tcp("s1".into(), 26379),
                ConnectionAddr::Tcp("s2".into(), 26380),
            ]
        );
        assert_eq!(s.master, "mymaster");
        assert_eq!(s.db, 4);
        assert_eq!(s.password.as_deref(), Some("pw"));
        assert!(!s.tls);
        assert!(RedisTarget::parse("redis+sentinel://s1:26379").is_err());
        assert!(RedisTarget::parse("redis+sentinel://s1:26379/m/1/x").is_err());
    }

    #[test]
    fn errors_never_show_passwords() {
        let err = RedisTarget::parse("memcached://u:hunter2@h:1").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert_eq!(redact("redis://u:hunter2@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://h:1/0"), "redis://h:1/0");
    }
}
