//! Listeners and their certificates: an LDS `Listener` and SDS `Secret`s turned into what the
//! accept loop needs.
//!
//! This is the first step of the request flow. The server binds [`Listener::address`]. On each
//! accepted connection it picks a [`FilterChain`] with [`Listener::chain_for`], from the SNI of
//! the ClientHello when the chains terminate TLS. It then terminates TLS with the chain's
//! [`TlsTermination`], whose certificate is a [`TlsCertificate`] delivered over SDS. Last, it
//! serves HTTP with the chain's [`HttpSettings`], which name the RDS route table to match
//! requests against.
//!
//! A listener names other resources without containing them: its route tables (RDS), its
//! certificates and its API-key filter's key table (SDS [`Secret`]s).
//! [`Listener::references`] lists them, for the xDS client to subscribe to
//! and for the snapshot builder to check that they have arrived.
//!
//! The subset accepted is what Tollgate's control plane emits, plus the settings Envoy applies
//! by default (timeouts, limits, `x-forwarded-for` and `x-request-id` handling). Everything
//! else that would change behaviour is rejected, naming the field (see [`super`]).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use prost::{Message, Name};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use tollgate_proto::envoy::config::core::v3 as core_pb;
use tollgate_proto::envoy::config::listener::v3 as listener_pb;
use tollgate_proto::envoy::extensions::filters::http::router::v3 as router_pb;
use tollgate_proto::envoy::extensions::filters::listener::tls_inspector::v3 as tls_inspector_pb;
use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;
use tollgate_proto::envoy::extensions::transport_sockets::raw_buffer::v3 as raw_buffer_pb;
use tollgate_proto::envoy::extensions::transport_sockets::tls::v3 as tls_pb;
use tollgate_proto::google::protobuf as pb;

pub use super::filters::api_key::ApiKeyTable;
pub use super::filters::{HttpFilter, HttpFilterKind};
pub use access_log::{AccessLogConfig, AccessLogField, AccessLogSink};

use super::http_options::{http1_options, http2_options};
use super::{ConfigError, Reason, Rejection, Resource, Within as _, reject_if, reject_set};

mod access_log;

/// Envoy's `stream_idle_timeout` when unset.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Envoy's `drain_timeout` when unset.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Envoy's downstream connection `idle_timeout` when unset.
pub const DEFAULT_CONNECTION_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Envoy's `max_request_headers_kb` when unset.
pub const DEFAULT_MAX_REQUEST_HEADERS_KB: u32 = 60;

/// Envoy's `max_headers_count` when unset.
pub const DEFAULT_MAX_HEADERS_COUNT: u32 = 100;

/// Envoy's upper bound on `max_request_headers_kb`.
const MAX_REQUEST_HEADERS_KB: u32 = 8192;

/// A validated LDS listener: where to accept connections and how to serve them.
#[derive(Debug)]
pub struct Listener {
    name: String,
    address: SocketAddr,
    chains: Vec<FilterChain>,
    default_chain: Option<FilterChain>,
    server_names: ServerNameIndex,
}

/// How one kind of connection is served: with or without TLS, then HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterChain {
    /// The chain's name (for logs and stats); may be empty.
    pub name: String,
    /// The SNI names this chain serves, lower case; `*.example.com` covers any name ending in
    /// `.example.com`. Empty: any client that no other chain claims.
    pub server_names: Vec<String>,
    /// TLS termination; `None` for plain TCP.
    pub tls: Option<TlsTermination>,
    /// The HTTP connection manager's settings.
    pub http: HttpSettings,
}

/// TLS termination of a filter chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsTermination {
    /// The SDS secret holding the certificate and key; see [`TlsCertificate`].
    pub certificate: String,
    /// The ALPN protocols offered, in preference order: `h2` and/or `http/1.1`. Empty means
    /// no ALPN, and the client speaks HTTP/1.1 unless the codec detects an HTTP/2 preface.
    pub alpn: Vec<String>,
}

/// The HTTP connection manager of a filter chain (Envoy's `HttpConnectionManager`), with
/// Envoy's defaults filled in for what the config leaves unset.
///
/// Some behaviour is not configurable because the only value accepted is Envoy's default. An
/// incoming `x-forwarded-client-cert` is removed (`SANITIZE`). The `server` response header is
/// overwritten. Escaped slashes in paths are left alone. The only HTTP/1.1 upgrade accepted is
/// WebSocket (see [`HttpSettings::websocket`]); others are refused, as Envoy answers 403.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// `stat_prefix`, for metrics.
    pub stat_prefix: String,
    /// The RDS route table that requests are matched against.
    pub route_config_name: String,
    /// Which HTTP versions are spoken.
    pub codec: Codec,
    /// The HTTP filters, in order; the last is always [`HttpFilterKind::Router`].
    pub http_filters: Vec<HttpFilter>,
    /// Whether the peer address is the client's, rather than what `x-forwarded-for` says.
    /// This decides the client address and whether the request is internal, and is what
    /// gets appended to `x-forwarded-for`.
    pub use_remote_address: bool,
    /// How many `x-forwarded-for` hops are trusted when determining the client address.
    pub xff_num_trusted_hops: u32,
    /// Whether to leave `x-forwarded-for` as it came, rather than append the peer address.
    pub skip_xff_append: bool,
    /// Whether to generate `x-request-id` when absent or untrusted (default true).
    pub generate_request_id: bool,
    /// Whether an external client's `x-request-id` is kept rather than replaced.
    pub preserve_external_request_id: bool,
    /// Whether `x-request-id` is copied into the response.
    pub always_set_request_id_in_response: bool,
    /// Whether paths are normalised (RFC 3986: `.` and `..` segments, percent-encoding)
    /// before routing and forwarding.
    pub normalize_path: bool,
    /// Whether runs of `/` in paths are merged into one before routing and forwarding.
    pub merge_slashes: bool,
    /// The `server` response header. `None` when unset; Envoy then sends `envoy`.
    pub server_name: Option<String>,
    /// Timeouts.
    pub timeouts: HttpTimeouts,
    /// The largest request headers accepted, in KiB (default 60); larger gets 431.
    pub max_request_headers_kb: u32,
    /// The most request headers accepted (default 100); more gets 431.
    pub max_headers_count: u32,
    /// Whether WebSocket upgrades (`Upgrade: websocket`) are proxied (an `upgrade_configs`
    /// entry of type `websocket`). Without it, upgrade requests get 403, as from Envoy.
    pub websocket: bool,
    /// The access log: one JSON line per request; `None` for none.
    pub access_log: Option<AccessLogConfig>,
}

/// Timeouts of an HTTP connection manager; `None` means none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpTimeouts {
    /// A stream (request and response) with no activity for this long is reset
    /// (`stream_idle_timeout`; default [`DEFAULT_STREAM_IDLE_TIMEOUT`]).
    pub stream_idle: Option<Duration>,
    /// The whole request must have arrived within this (`request_timeout`; default none).
    pub request: Option<Duration>,
    /// The request headers must have arrived within this (`request_headers_timeout`).
    pub request_headers: Option<Duration>,
    /// A stream that lasts longer is reset, however active (`max_stream_duration`).
    pub max_stream_duration: Option<Duration>,
    /// A connection with no streams for this long is closed (`idle_timeout`; default
    /// [`DEFAULT_CONNECTION_IDLE_TIMEOUT`]).
    pub connection_idle: Option<Duration>,
    /// A connection that lasts longer is drained and closed (`max_connection_duration`).
    pub max_connection_duration: Option<Duration>,
    /// On drain, how long HTTP/2 clients get between the first GOAWAY and the last
    /// (`drain_timeout`; default [`DEFAULT_DRAIN_TIMEOUT`]).
    pub drain: Duration,
}

/// Which HTTP versions a connection manager speaks (`codec_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// HTTP/2 when ALPN says `h2` or the client sends the HTTP/2 preface, else HTTP/1.1.
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only.
    Http2,
}

/// What a listener needs from other resources: see [`Listener::references`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct References<'a> {
    /// RDS route tables, by name.
    pub route_configs: BTreeSet<&'a str>,
    /// SDS secrets holding TLS certificates, by name.
    pub secrets: BTreeSet<&'a str>,
    /// SDS secrets holding API-key tables (the API-key filter's `key_table`), by name.
    pub key_tables: BTreeSet<&'a str>,
}

impl Listener {
    /// The listener's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address to bind.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The filter chains, in config order.
    pub fn chains(&self) -> &[FilterChain] {
        &self.chains
    }

    /// The chain for connections no other chain matches.
    pub fn default_chain(&self) -> Option<&FilterChain> {
        self.default_chain.as_ref()
    }

    /// Whether connections are TLS. A listener's chains either all terminate TLS or none do.
    pub fn is_tls(&self) -> bool {
        self.all_chains().any(|chain| chain.tls.is_some())
    }

    /// The chain for a connection whose client sent `server_name` as SNI (`None`: no SNI, or
    /// no TLS). As Envoy's `FilterChainManagerImpl`, an exact name wins, then the longest
    /// wildcard (`*.b.example.com` before `*.example.com`), then a chain without server
    /// names, then the default chain. `None` means Envoy closes the connection.
    pub fn chain_for(&self, server_name: Option<&str>) -> Option<&FilterChain> {
        self.server_names
            .find(server_name)
            .map(|i| &self.chains[i])
            .or(self.default_chain.as_ref())
    }

    /// The route tables, certificates and API-key tables this listener uses, for the xDS
    /// client to subscribe to; the listener cannot serve until they have all arrived.
    pub fn references(&self) -> References<'_> {
        let mut references = References::default();
        for chain in self.all_chains() {
            references
                .route_configs
                .insert(chain.http.route_config_name.as_str());
            if let Some(tls) = &chain.tls {
                references.secrets.insert(tls.certificate.as_str());
            }
            for filter in &chain.http.http_filters {
                if let HttpFilterKind::ApiKey(config) = &filter.kind {
                    references.key_tables.insert(config.key_table.as_str());
                }
            }
        }
        references
    }

    fn all_chains(&self) -> impl Iterator<Item = &FilterChain> {
        self.chains.iter().chain(&self.default_chain)
    }
}

/// Filter chains by server name, as Envoy's filter chain matching indexes them.
#[derive(Debug, Default)]
struct ServerNameIndex {
    exact: HashMap<String, usize>,
    /// `*.example.com` under `.example.com`.
    wildcard: HashMap<String, usize>,
    /// The chain without server names.
    any: Option<usize>,
}

impl ServerNameIndex {
    /// Registers `chain` for `name` (lower case, `None`: any); on a duplicate, returns the
    /// chain that has it already.
    fn insert(&mut self, name: Option<&str>, chain: usize) -> Result<(), usize> {
        let slot = match name {
            None => {
                if let Some(first) = self.any {
                    return Err(first);
                }
                self.any = Some(chain);
                return Ok(());
            }
            Some(name) => match name.strip_prefix('*') {
                Some(suffix) => self.wildcard.entry(suffix.to_owned()),
                None => self.exact.entry(name.to_owned()),
            },
        };
        match slot {
            std::collections::hash_map::Entry::Occupied(first) => Err(*first.get()),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(chain);
                Ok(())
            }
        }
    }

    fn find(&self, server_name: Option<&str>) -> Option<usize> {
        if let Some(name) = server_name {
            // DNS names are case-insensitive; the configured ones are stored lower case.
            let name: Cow<'_, str> = if name.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(name.to_ascii_lowercase())
            } else {
                Cow::Borrowed(name)
            };
            if let Some(&i) = self.exact.get(name.as_ref()) {
                return Some(i);
            }
            // Longest suffix first: `a.b.example.com` tries `.b.example.com`, then
            // `.example.com`, then `.com`.
            let wildcard = name
                .match_indices('.')
                .find_map(|(i, _)| self.wildcard.get(&name[i..]).copied());
            if wildcard.is_some() {
                return wildcard;
            }
        }
        self.any
    }
}

// ---------------------------------------------------------------------------------------------
// Secrets (SDS)

/// A validated SDS `Secret`: a TLS certificate, or (a generic secret) an API-key table.
#[derive(Debug, Clone)]
pub enum Secret {
    /// `tls_certificate`.
    Tls(TlsCertificate),
    /// `generic_secret` holding a `tollgate.filters.http.api_key.v1.ApiKeyTable`, decoded and
    /// indexed once.
    ApiKeyTable {
        /// The secret's name, which the API-key filter's `key_table` refers to.
        name: String,
        /// The table.
        table: Arc<ApiKeyTable>,
    },
}

impl Secret {
    /// The secret's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Tls(certificate) => certificate.name(),
            Self::ApiKeyTable { name, .. } => name,
        }
    }
}

impl TryFrom<&tls_pb::Secret> for Secret {
    type Error = ConfigError;

    fn try_from(proto: &tls_pb::Secret) -> Result<Self, ConfigError> {
        use tls_pb::secret::Type;
        let read = || match &proto.r#type {
            Some(Type::GenericSecret(generic)) => {
                if proto.name.is_empty() {
                    return Err(Rejection::new("name", Reason::Missing));
                }
                let table = super::filters::api_key::key_table(generic).within("generic_secret")?;
                Ok(Secret::ApiKeyTable {
                    name: proto.name.clone(),
                    table: Arc::new(table),
                })
            }
            _ => secret(proto).map(Secret::Tls),
        };
        read().map_err(|e| e.into_error(Resource::Secret(proto.name.clone())))
    }
}

/// A certificate and its private key from an SDS `Secret`, checked to belong together.
///
/// Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct TlsCertificate {
    name: String,
    chain_pem: String,
    key_pem: String,
    certified_key: Arc<CertifiedKey>,
}

impl TlsCertificate {
    /// The secret's name, which [`TlsTermination::certificate`] refers to.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The certificate chain, PEM, leaf first.
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// The private key, PEM. Never log it or show it.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The chain and signing key, ready for a rustls certificate resolver.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified_key
    }
}

impl fmt::Debug for TlsCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Whoever debug-logs a snapshot must not leak the key; the chain is public but long.
        f.debug_struct("TlsCertificate")
            .field("name", &self.name)
            .field(
                "chain_pem",
                &format_args!("<{} bytes>", self.chain_pem.len()),
            )
            .field("key_pem", &format_args!("<redacted>"))
            .finish_non_exhaustive()
    }
}

impl TryFrom<&tls_pb::Secret> for TlsCertificate {
    type Error = ConfigError;

    fn try_from(proto: &tls_pb::Secret) -> Result<Self, ConfigError> {
        secret(proto).map_err(|e| e.into_error(Resource::Secret(proto.name.clone())))
    }
}

fn secret(proto: &tls_pb::Secret) -> Result<TlsCertificate, Rejection> {
    use tls_pb::secret::Type;
    let tls_pb::Secret { name, r#type } = proto;
    if name.is_empty() {
        return Err(Rejection::new("name", Reason::Missing));
    }
    let certificate = match r#type {
        Some(Type::TlsCertificate(certificate)) => certificate,
        None => return Err(Rejection::new("tls_certificate", Reason::Missing)),
        Some(Type::SessionTicketKeys(_)) => {
            return Err(Rejection::unsupported("session_ticket_keys"));
        }
        Some(Type::ValidationContext(_)) => {
            return Err(Rejection::unsupported("validation_context"));
        }
        Some(Type::GenericSecret(_)) => return Err(Rejection::unsupported("generic_secret")),
    };
    let (chain_pem, key_pem, certified_key) =
        tls_certificate(certificate).within("tls_certificate")?;
    Ok(TlsCertificate {
        name: name.clone(),
        chain_pem,
        key_pem,
        certified_key,
    })
}

fn tls_certificate(
    proto: &tls_pb::TlsCertificate,
) -> Result<(String, String, Arc<CertifiedKey>), Rejection> {
    let tls_pb::TlsCertificate {
        certificate_chain,
        private_key,
        pkcs12,
        watched_directory,
        private_key_provider,
        password,
        ocsp_staple,
        signed_certificate_timestamp,
        tls_params,
    } = proto;
    reject_set(&[
        (pkcs12.is_some(), "pkcs12"),
        (watched_directory.is_some(), "watched_directory"),
        (private_key_provider.is_some(), "private_key_provider"),
        (password.is_some(), "password"),
        (ocsp_staple.is_some(), "ocsp_staple"),
        (
            !signed_certificate_timestamp.is_empty(),
            "signed_certificate_timestamp",
        ),
        (tls_params.is_some(), "tls_params"),
    ])?;
    let chain_pem = certificate_chain
        .as_ref()
        .ok_or_else(|| Rejection::new("certificate_chain", Reason::Missing))
        .and_then(|source| inline_text(source).within("certificate_chain"))?;
    let key_pem = private_key
        .as_ref()
        .ok_or_else(|| Rejection::new("private_key", Reason::Missing))
        .and_then(|source| inline_text(source).within("private_key"))?;

    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| {
            Rejection::new(
                "certificate_chain",
                Reason::Invalid(format!("is not PEM: {e}")),
            )
        })?;
    if chain.is_empty() {
        return Err(Rejection::new(
            "certificate_chain",
            Reason::Invalid("holds no CERTIFICATE block".into()),
        ));
    }
    // From here on, no message may quote the key or an error about its bytes: the reasons
    // are fixed strings.
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| {
        Rejection::new(
            "private_key",
            Reason::Invalid("is not a PEM private key (PKCS#8, PKCS#1 or SEC1)".into()),
        )
    })?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|_| {
        Rejection::new(
            "private_key",
            Reason::Invalid("is not an RSA, ECDSA or Ed25519 key".into()),
        )
    })?;
    let certified_key = CertifiedKey::new(chain, signing_key);
    match certified_key.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(Rejection::new(
                "private_key",
                Reason::Invalid("does not match the certificate's public key".into()),
            ));
        }
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(Rejection::new(
                "private_key",
                Reason::Invalid("cannot be checked against the certificate".into()),
            ));
        }
        // Parsing the leaf failed; only the certificate is quoted.
        Err(e) => {
            return Err(Rejection::new(
                "certificate_chain",
                Reason::Invalid(format!("unreadable leaf certificate: {e}")),
            ));
        }
    }
    Ok((chain_pem, key_pem, Arc::new(certified_key)))
}

/// The text of an inline `DataSource`. Its content is never quoted in errors: it may be a key.
fn inline_text(proto: &core_pb::DataSource) -> Result<String, Rejection> {
    use core_pb::data_source::Specifier;
    let core_pb::DataSource {
        watched_directory,
        specifier,
    } = proto;
    reject_if(watched_directory.is_some(), "watched_directory")?;
    match specifier {
        Some(Specifier::InlineString(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Specifier::InlineBytes(b)) if !b.is_empty() => String::from_utf8(b.clone())
            .map_err(|_| Rejection::new("inline_bytes", Reason::Invalid("is not PEM".into()))),
        None | Some(Specifier::InlineString(_) | Specifier::InlineBytes(_)) => {
            Err(Rejection::new("inline_string", Reason::Missing))
        }
        // Reading files or the environment is I/O that config building does not do.
        Some(Specifier::Filename(_)) => Err(Rejection::unsupported("filename")),
        Some(Specifier::EnvironmentVariable(_)) => {
            Err(Rejection::unsupported("environment_variable"))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Building: proto -> listener. Every proto message is destructured without `..`, so a field
// added to Envoy's API breaks the build here instead of being ignored silently.

impl TryFrom<&listener_pb::Listener> for Listener {
    type Error = ConfigError;

    fn try_from(proto: &listener_pb::Listener) -> Result<Self, ConfigError> {
        listener(proto).map_err(|e| e.into_error(Resource::Listener(proto.name.clone())))
    }
}

#[allow(deprecated)] // deprecated fields still change behaviour when set: they must be read
fn listener(proto: &listener_pb::Listener) -> Result<Listener, Rejection> {
    let listener_pb::Listener {
        name,
        address,
        additional_addresses,
        stat_prefix: _,
        stats_matcher: _,
        filter_chains,
        fcds_config,
        filter_chain_matcher,
        use_original_dst,
        default_filter_chain,
        per_connection_buffer_limit_bytes,
        per_connection_buffer_high_watermark_timeout,
        metadata: _,
        deprecated_v1,
        drain_type,
        listener_filters,
        listener_filters_timeout,
        continue_on_listener_filters_timeout,
        transparent,
        freebind,
        socket_options,
        tcp_fast_open_queue_length,
        // Only labels the listener for tracing and stats.
        traffic_direction: _,
        udp_listener_config,
        api_listener,
        connection_balance_config,
        reuse_port,
        enable_reuse_port,
        access_log,
        tcp_backlog_size,
        max_connections_to_accept_per_socket_event,
        bind_to_port,
        enable_mptcp,
        ignore_global_conn_limit,
        bypass_overload_manager,
        tcp_keepalive,
        listener_specifier,
    } = proto;
    if name.is_empty() {
        return Err(Rejection::new("name", Reason::Missing));
    }
    let is_true = |v: &Option<pb::BoolValue>| v.is_some_and(|v| v.value);
    reject_set(&[
        (api_listener.is_some(), "api_listener"),
        (listener_specifier.is_some(), "internal_listener"),
        (udp_listener_config.is_some(), "udp_listener_config"),
        (!additional_addresses.is_empty(), "additional_addresses"),
        (fcds_config.is_some(), "fcds_config"),
        (filter_chain_matcher.is_some(), "filter_chain_matcher"),
        (is_true(use_original_dst), "use_original_dst"),
        (
            per_connection_buffer_limit_bytes.is_some(),
            "per_connection_buffer_limit_bytes",
        ),
        (
            per_connection_buffer_high_watermark_timeout.is_some(),
            "per_connection_buffer_high_watermark_timeout",
        ),
        (deprecated_v1.is_some(), "deprecated_v1"),
        (
            *drain_type != listener_pb::listener::DrainType::Default as i32,
            "drain_type",
        ),
        (
            listener_filters_timeout.is_some(),
            "listener_filters_timeout",
        ),
        (
            *continue_on_listener_filters_timeout,
            "continue_on_listener_filters_timeout",
        ),
        (is_true(transparent), "transparent"),
        (is_true(freebind), "freebind"),
        (!socket_options.is_empty(), "socket_options"),
        (
            tcp_fast_open_queue_length.is_some(),
            "tcp_fast_open_queue_length",
        ),
        (
            connection_balance_config.is_some(),
            "connection_balance_config",
        ),
        (*reuse_port, "reuse_port"),
        (enable_reuse_port.is_some(), "enable_reuse_port"),
        (!access_log.is_empty(), "access_log"),
        (tcp_backlog_size.is_some(), "tcp_backlog_size"),
        (
            max_connections_to_accept_per_socket_event.is_some(),
            "max_connections_to_accept_per_socket_event",
        ),
        (bind_to_port.is_some_and(|v| !v.value), "bind_to_port"),
        (*enable_mptcp, "enable_mptcp"),
        // Neither exists in this proxy (no global connection limit, no overload manager):
        // the flags would promise an exemption from something that is never applied.
        (*ignore_global_conn_limit, "ignore_global_conn_limit"),
        (*bypass_overload_manager, "bypass_overload_manager"),
        (tcp_keepalive.is_some(), "tcp_keepalive"),
    ])?;

    let address = address
        .as_ref()
        .ok_or_else(|| Rejection::new("address", Reason::Missing))
        .and_then(|a| listen_address(a).within("address"))?;
    let mut tls_inspector = false;
    for (i, filter) in listener_filters.iter().enumerate() {
        listener_filter(filter).at("listener_filters", i)?;
        tls_inspector = true;
    }

    if filter_chains.is_empty() && default_filter_chain.is_none() {
        return Err(Rejection::new("filter_chains", Reason::Missing));
    }
    let mut server_names = ServerNameIndex::default();
    let mut chains = Vec::with_capacity(filter_chains.len());
    for (i, proto) in filter_chains.iter().enumerate() {
        let chain = filter_chain(proto, true).at("filter_chains", i)?;
        // Without the inspector, SNI is unknown when Envoy picks a chain: chains with server
        // names would never match. Envoy accepts that with a warning; it is surely a mistake.
        if !chain.server_names.is_empty() && !tls_inspector {
            return Err(Rejection::new(
                "server_names",
                Reason::Invalid(
                    "matching on SNI needs the envoy.filters.listener.tls_inspector listener \
                     filter"
                        .into(),
                ),
            )
            .within("filter_chain_match")
            .at("filter_chains", i));
        }
        let names: Vec<Option<&str>> = if chain.server_names.is_empty() {
            vec![None]
        } else {
            chain
                .server_names
                .iter()
                .map(|n| Some(n.as_str()))
                .collect()
        };
        for (j, name) in names.into_iter().enumerate() {
            if let Err(first) = server_names.insert(name, i) {
                // Envoy refuses two chains with the same match; so does this proxy.
                let rejection = match name {
                    Some(name) => Rejection::new_at(
                        "server_names",
                        j,
                        Reason::Invalid(format!(
                            "duplicate server name {name:?}, already in filter_chains[{first}]"
                        )),
                    )
                    .within("filter_chain_match"),
                    None => Rejection::new(
                        "filter_chain_match",
                        Reason::Invalid(format!(
                            "matches every connection, as filter_chains[{first}] does"
                        )),
                    ),
                };
                return Err(rejection.at("filter_chains", i));
            }
        }
        chains.push(chain);
    }
    let default_chain = default_filter_chain
        .as_ref()
        .map(|proto| filter_chain(proto, false).within("default_filter_chain"))
        .transpose()?;

    // One listener is either TLS or plain. Mixing them would need the server to sniff
    // each connection for a ClientHello, which Envoy's tls_inspector does and this proxy
    // does not.
    let chain_tls = chains
        .iter()
        .enumerate()
        .map(|(i, c)| (c.tls.is_some(), Some(i)))
        .chain(default_chain.as_ref().map(|c| (c.tls.is_some(), None)));
    let mut first_tls = None;
    for (tls, index) in chain_tls {
        match first_tls {
            None => first_tls = Some(tls),
            Some(first) if first != tls => {
                let rejection = Rejection::new(
                    "transport_socket",
                    Reason::UnsupportedValue("TLS and plain filter chains on one listener".into()),
                );
                return Err(match index {
                    Some(i) => rejection.at("filter_chains", i),
                    None => rejection.within("default_filter_chain"),
                });
            }
            Some(_) => {}
        }
    }

    Ok(Listener {
        name: name.clone(),
        address,
        chains,
        default_chain,
        server_names,
    })
}

fn listen_address(proto: &core_pb::Address) -> Result<SocketAddr, Rejection> {
    use core_pb::address::Address;
    use core_pb::socket_address::{PortSpecifier, Protocol};
    let core_pb::Address { address } = proto;
    let socket = match address {
        Some(Address::SocketAddress(socket)) => socket,
        None => return Err(Rejection::new("socket_address", Reason::Missing)),
        Some(Address::Pipe(_)) => return Err(Rejection::unsupported("pipe")),
        Some(Address::EnvoyInternalAddress(_)) => {
            return Err(Rejection::unsupported("envoy_internal_address"));
        }
    };
    let core_pb::SocketAddress {
        protocol,
        address,
        resolver_name,
        ipv4_compat,
        network_namespace_filepath,
        port_specifier,
    } = socket;
    let within = |r: Rejection| r.within("socket_address");
    match Protocol::try_from(*protocol) {
        Ok(Protocol::Tcp) => {}
        Ok(Protocol::Udp) => {
            return Err(within(Rejection::new(
                "protocol",
                Reason::UnsupportedValue("UDP".into()),
            )));
        }
        Err(_) => {
            return Err(within(Rejection::new(
                "protocol",
                Reason::Invalid(format!("unknown protocol {protocol}")),
            )));
        }
    }
    reject_set(&[
        (!resolver_name.is_empty(), "resolver_name"),
        (*ipv4_compat, "ipv4_compat"),
        (
            !network_namespace_filepath.is_empty(),
            "network_namespace_filepath",
        ),
    ])
    .map_err(within)?;
    // A listener binds an address; Envoy resolves no names here either.
    let ip: IpAddr = address.parse().map_err(|_| {
        within(Rejection::new(
            "address",
            Reason::Invalid(format!("{address:?} is not an IP address")),
        ))
    })?;
    let port = match port_specifier {
        Some(PortSpecifier::PortValue(port)) => u16::try_from(*port).map_err(|_| {
            within(Rejection::new(
                "port_value",
                Reason::Invalid(format!("{port} is not a port")),
            ))
        })?,
        None => return Err(within(Rejection::new("port_value", Reason::Missing))),
        Some(PortSpecifier::NamedPort(_)) => {
            return Err(within(Rejection::unsupported("named_port")));
        }
    };
    Ok(SocketAddr::new(ip, port))
}

/// Accepts the TLS inspector with its default config, and nothing else.
fn listener_filter(proto: &listener_pb::ListenerFilter) -> Result<(), Rejection> {
    use listener_pb::listener_filter::ConfigType;
    let listener_pb::ListenerFilter {
        name,
        filter_disabled,
        config_type,
    } = proto;
    reject_if(filter_disabled.is_some(), "filter_disabled")?;
    let any = match config_type {
        Some(ConfigType::TypedConfig(any)) => any,
        None => return Err(Rejection::new("typed_config", Reason::Missing)),
        Some(ConfigType::ConfigDiscovery(_)) => {
            return Err(Rejection::unsupported("config_discovery"));
        }
    };
    // As Envoy, the config's type picks the extension; the name is only a label.
    let inspector: tls_inspector_pb::TlsInspector =
        if is_type::<tls_inspector_pb::TlsInspector>(any) {
            decode(any).within("typed_config")?
        } else {
            return Err(unsupported_extension("listener filter", name, any));
        };
    let tls_inspector_pb::TlsInspector {
        enable_ja3_fingerprinting,
        enable_ja4_fingerprinting,
        initial_read_buffer_size,
        close_connection_on_client_hello_parsing_errors,
        max_client_hello_size,
    } = inspector;
    reject_set(&[
        (
            enable_ja3_fingerprinting.is_some_and(|v| v.value),
            "enable_ja3_fingerprinting",
        ),
        (
            enable_ja4_fingerprinting.is_some_and(|v| v.value),
            "enable_ja4_fingerprinting",
        ),
        (
            initial_read_buffer_size.is_some(),
            "initial_read_buffer_size",
        ),
        (
            close_connection_on_client_hello_parsing_errors,
            "close_connection_on_client_hello_parsing_errors",
        ),
        (max_client_hello_size.is_some(), "max_client_hello_size"),
    ])
    .within("typed_config")
}

/// One filter chain. `matched` is false for the default chain, which has no match of its own.
#[allow(deprecated)] // deprecated fields still change behaviour when set: they must be read
fn filter_chain(proto: &listener_pb::FilterChain, matched: bool) -> Result<FilterChain, Rejection> {
    let listener_pb::FilterChain {
        filter_chain_match,
        filters,
        use_proxy_proto,
        metadata: _,
        transport_socket,
        transport_socket_connect_timeout,
        name,
    } = proto;
    reject_set(&[
        (use_proxy_proto.is_some_and(|v| v.value), "use_proxy_proto"),
        (
            transport_socket_connect_timeout.is_some(),
            "transport_socket_connect_timeout",
        ),
    ])?;
    let server_names = match filter_chain_match {
        None => Vec::new(),
        Some(m) => chain_match(m).within("filter_chain_match")?,
    };
    // Envoy ignores the default chain's match, silently; names there are surely a mistake.
    if !matched && !server_names.is_empty() {
        return Err(Rejection::new(
            "server_names",
            Reason::Invalid("the default filter chain matches nothing of its own".into()),
        )
        .within("filter_chain_match"));
    }
    let tls = transport_socket
        .as_ref()
        .map(|socket| self::transport_socket(socket).within("transport_socket"))
        .transpose()?
        .flatten();
    if !server_names.is_empty() && tls.is_none() {
        return Err(Rejection::new(
            "server_names",
            Reason::Invalid("a plain TCP connection has no SNI to match".into()),
        )
        .within("filter_chain_match"));
    }
    let http = network_filters(filters)?;
    Ok(FilterChain {
        name: name.clone(),
        server_names,
        tls,
        http,
    })
}

fn chain_match(proto: &listener_pb::FilterChainMatch) -> Result<Vec<String>, Rejection> {
    use listener_pb::filter_chain_match::ConnectionSourceType;
    let listener_pb::FilterChainMatch {
        destination_port,
        prefix_ranges,
        address_suffix,
        suffix_len,
        direct_source_prefix_ranges,
        source_type,
        source_prefix_ranges,
        source_ports,
        server_names,
        transport_protocol,
        application_protocols,
    } = proto;
    reject_set(&[
        (destination_port.is_some(), "destination_port"),
        (!prefix_ranges.is_empty(), "prefix_ranges"),
        (!address_suffix.is_empty(), "address_suffix"),
        (suffix_len.is_some(), "suffix_len"),
        (
            !direct_source_prefix_ranges.is_empty(),
            "direct_source_prefix_ranges",
        ),
        (
            *source_type != ConnectionSourceType::Any as i32,
            "source_type",
        ),
        (!source_prefix_ranges.is_empty(), "source_prefix_ranges"),
        (!source_ports.is_empty(), "source_ports"),
        (!transport_protocol.is_empty(), "transport_protocol"),
        (!application_protocols.is_empty(), "application_protocols"),
    ])?;
    server_names
        .iter()
        .enumerate()
        .map(|(i, name)| server_name(name).map_err(|r| Rejection::new_at("server_names", i, r)))
        .collect()
}

/// A server name to match SNI against: a DNS name, or `*.` and one. Lower-cased.
fn server_name(name: &str) -> Result<String, Reason> {
    let host = name.strip_prefix("*.").unwrap_or(name);
    let valid = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        });
    if valid {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(Reason::Invalid(format!(
            "{name:?} is not a DNS name, or `*.` and one"
        )))
    }
}

/// TLS termination, or `None` for the raw buffer (plain TCP) socket.
fn transport_socket(proto: &core_pb::TransportSocket) -> Result<Option<TlsTermination>, Rejection> {
    use core_pb::transport_socket::ConfigType;
    let core_pb::TransportSocket { name, config_type } = proto;
    let any = match config_type {
        Some(ConfigType::TypedConfig(any)) => any,
        None => return Err(Rejection::new("typed_config", Reason::Missing)),
    };
    if is_type::<raw_buffer_pb::RawBuffer>(any) {
        let raw_buffer_pb::RawBuffer {} = decode(any).within("typed_config")?;
        return Ok(None);
    }
    if !is_type::<tls_pb::DownstreamTlsContext>(any) {
        return Err(unsupported_extension("transport socket", name, any));
    }
    let context = decode(any).within("typed_config")?;
    downstream_tls(&context).within("typed_config").map(Some)
}

fn downstream_tls(proto: &tls_pb::DownstreamTlsContext) -> Result<TlsTermination, Rejection> {
    use tls_pb::downstream_tls_context::{OcspStaplePolicy, SessionTicketKeysType};
    let tls_pb::DownstreamTlsContext {
        common_tls_context,
        require_client_certificate,
        require_sni,
        disable_stateful_session_resumption,
        session_timeout,
        ocsp_staple_policy,
        full_scan_certs_on_sni_mismatch,
        prefer_client_ciphers,
        session_ticket_keys_type,
    } = proto;
    reject_set(&[
        (
            require_client_certificate.is_some_and(|v| v.value),
            "require_client_certificate",
        ),
        (require_sni.is_some_and(|v| v.value), "require_sni"),
        (
            *disable_stateful_session_resumption,
            "disable_stateful_session_resumption",
        ),
        (session_timeout.is_some(), "session_timeout"),
        (
            *ocsp_staple_policy != OcspStaplePolicy::LenientStapling as i32,
            "ocsp_staple_policy",
        ),
        (
            full_scan_certs_on_sni_mismatch.is_some_and(|v| v.value),
            "full_scan_certs_on_sni_mismatch",
        ),
        (*prefer_client_ciphers, "prefer_client_ciphers"),
    ])?;
    match session_ticket_keys_type {
        None | Some(SessionTicketKeysType::DisableStatelessSessionResumption(false)) => {}
        Some(SessionTicketKeysType::SessionTicketKeys(_)) => {
            return Err(Rejection::unsupported("session_ticket_keys"));
        }
        Some(SessionTicketKeysType::SessionTicketKeysSdsSecretConfig(_)) => {
            return Err(Rejection::unsupported(
                "session_ticket_keys_sds_secret_config",
            ));
        }
        Some(SessionTicketKeysType::DisableStatelessSessionResumption(true)) => {
            return Err(Rejection::unsupported(
                "disable_stateless_session_resumption",
            ));
        }
    }
    let common = common_tls_context
        .as_ref()
        .ok_or_else(|| Rejection::new("common_tls_context", Reason::Missing))?;
    common_tls(common).within("common_tls_context")
}

#[allow(deprecated)] // deprecated fields still change behaviour when set: they must be read
fn common_tls(proto: &tls_pb::CommonTlsContext) -> Result<TlsTermination, Rejection> {
    use tls_pb::common_tls_context::ValidationContextType;
    let tls_pb::CommonTlsContext {
        tls_params,
        tls_certificates,
        tls_certificate_sds_secret_configs,
        tls_certificate_provider_instance,
        custom_tls_certificate_selector,
        tls_certificate_certificate_provider,
        tls_certificate_certificate_provider_instance,
        alpn_protocols,
        custom_handshaker,
        key_log,
        validation_context_type,
    } = proto;
    if let Some(params) = tls_params {
        self::tls_params(params).within("tls_params")?;
    }
    reject_set(&[
        // Keys travel in SDS secrets only, so that they are validated (and redacted) in one
        // place.
        (!tls_certificates.is_empty(), "tls_certificates"),
        (
            tls_certificate_provider_instance.is_some(),
            "tls_certificate_provider_instance",
        ),
        (
            custom_tls_certificate_selector.is_some(),
            "custom_tls_certificate_selector",
        ),
        (
            tls_certificate_certificate_provider.is_some(),
            "tls_certificate_certificate_provider",
        ),
        (
            tls_certificate_certificate_provider_instance.is_some(),
            "tls_certificate_certificate_provider_instance",
        ),
        (custom_handshaker.is_some(), "custom_handshaker"),
        (key_log.is_some(), "key_log"),
    ])?;
    match validation_context_type {
        None => {}
        Some(ValidationContextType::ValidationContext(_)) => {
            return Err(Rejection::unsupported("validation_context"));
        }
        Some(ValidationContextType::ValidationContextSdsSecretConfig(_)) => {
            return Err(Rejection::unsupported(
                "validation_context_sds_secret_config",
            ));
        }
        Some(ValidationContextType::CombinedValidationContext(_)) => {
            return Err(Rejection::unsupported("combined_validation_context"));
        }
        Some(ValidationContextType::ValidationContextCertificateProvider(_)) => {
            return Err(Rejection::unsupported(
                "validation_context_certificate_provider",
            ));
        }
        Some(ValidationContextType::ValidationContextCertificateProviderInstance(_)) => {
            return Err(Rejection::unsupported(
                "validation_context_certificate_provider_instance",
            ));
        }
    }
    // Envoy picks among several certificates by key type (RSA or ECDSA) for each client;
    // one certificate per chain is what the control plane sends.
    let certificate = match tls_certificate_sds_secret_configs.as_slice() {
        [] => {
            return Err(Rejection::new(
                "tls_certificate_sds_secret_configs",
                Reason::Missing,
            ));
        }
        [one] => sds_secret(one).at("tls_certificate_sds_secret_configs", 0)?,
        [_, ..] => {
            return Err(Rejection::new(
                "tls_certificate_sds_secret_configs",
                Reason::UnsupportedValue("more than one certificate".into()),
            ));
        }
    };
    let alpn = alpn_protocols
        .iter()
        .enumerate()
        .map(|(i, protocol)| match protocol.as_str() {
            "h2" | "http/1.1" => Ok(protocol.clone()),
            _ => Err(Rejection::new_at(
                "alpn_protocols",
                i,
                Reason::UnsupportedValue(format!("ALPN protocol {protocol:?}")),
            )),
        })
        .collect::<Result<_, _>>()?;
    Ok(TlsTermination { certificate, alpn })
}

/// Accepts only the defaults: rustls' protocol versions, cipher suites and curves are then
/// the ones offered, which differ from BoringSSL's in detail but not in what a client that
/// Envoy accepts by default can connect with.
fn tls_params(proto: &tls_pb::TlsParameters) -> Result<(), Rejection> {
    use tls_pb::tls_parameters::TlsProtocol;
    let tls_pb::TlsParameters {
        tls_minimum_protocol_version,
        tls_maximum_protocol_version,
        cipher_suites,
        ecdh_curves,
        signature_algorithms,
        compliance_policies,
    } = proto;
    reject_set(&[
        (
            *tls_minimum_protocol_version != TlsProtocol::TlsAuto as i32,
            "tls_minimum_protocol_version",
        ),
        (
            *tls_maximum_protocol_version != TlsProtocol::TlsAuto as i32,
            "tls_maximum_protocol_version",
        ),
        (!cipher_suites.is_empty(), "cipher_suites"),
        (!ecdh_curves.is_empty(), "ecdh_curves"),
        (!signature_algorithms.is_empty(), "signature_algorithms"),
        (!compliance_policies.is_empty(), "compliance_policies"),
    ])
}

/// The name of a secret fetched over ADS.
fn sds_secret(proto: &tls_pb::SdsSecretConfig) -> Result<String, Rejection> {
    let tls_pb::SdsSecretConfig { name, sds_config } = proto;
    if name.is_empty() {
        return Err(Rejection::new("name", Reason::Missing));
    }
    // Without a config source Envoy looks the name up among its bootstrap's static secrets;
    // this proxy has none.
    let source = sds_config
        .as_ref()
        .ok_or_else(|| Rejection::new("sds_config", Reason::Missing))?;
    ads_config_source(source).within("sds_config")?;
    Ok(name.clone())
}

/// Accepts a config source that means "the ADS stream": the proxy has no other.
#[allow(deprecated)] // deprecated fields still change behaviour when set: they must be read
fn ads_config_source(proto: &core_pb::ConfigSource) -> Result<(), Rejection> {
    use core_pb::config_source::ConfigSourceSpecifier;
    let core_pb::ConfigSource {
        authorities,
        initial_fetch_timeout,
        resource_api_version,
        config_source_specifier,
    } = proto;
    reject_set(&[
        (!authorities.is_empty(), "authorities"),
        (initial_fetch_timeout.is_some(), "initial_fetch_timeout"),
    ])?;
    api_version(*resource_api_version).map_err(|r| Rejection::new("resource_api_version", r))?;
    match config_source_specifier {
        Some(ConfigSourceSpecifier::Ads(core_pb::AggregatedConfigSource {})) => Ok(()),
        // `self`: the server that sent this resource, which is the ADS server.
        Some(ConfigSourceSpecifier::Self_(core_pb::SelfConfigSource {
            transport_api_version,
        })) => api_version(*transport_api_version)
            .map_err(|r| Rejection::new("transport_api_version", r).within("self")),
        None => Err(Rejection::new("ads", Reason::Missing)),
        Some(ConfigSourceSpecifier::Path(_)) => Err(Rejection::unsupported("path")),
        Some(ConfigSourceSpecifier::PathConfigSource(_)) => {
            Err(Rejection::unsupported("path_config_source"))
        }
        Some(ConfigSourceSpecifier::ApiConfigSource(_)) => {
            Err(Rejection::unsupported("api_config_source"))
        }
    }
}

fn api_version(version: i32) -> Result<(), Reason> {
    match core_pb::ApiVersion::try_from(version) {
        Ok(core_pb::ApiVersion::Auto | core_pb::ApiVersion::V3) => Ok(()),
        _ => Err(Reason::UnsupportedValue(format!(
            "API version {version}: only v3"
        ))),
    }
}

/// A chain's network filters: exactly one, the HTTP connection manager.
fn network_filters(filters: &[listener_pb::Filter]) -> Result<HttpSettings, Rejection> {
    use listener_pb::filter::ConfigType;
    let mut configs = Vec::with_capacity(filters.len());
    for (i, filter) in filters.iter().enumerate() {
        let listener_pb::Filter { name, config_type } = filter;
        let any = match config_type {
            Some(ConfigType::TypedConfig(any)) => any,
            None => return Err(Rejection::new("typed_config", Reason::Missing).at("filters", i)),
            Some(ConfigType::ConfigDiscovery(_)) => {
                return Err(Rejection::unsupported("config_discovery").at("filters", i));
            }
        };
        if !is_type::<hcm_pb::HttpConnectionManager>(any) {
            return Err(unsupported_extension("network filter", name, any).at("filters", i));
        }
        configs.push(any);
    }
    match configs.as_slice() {
        [] => Err(Rejection::new("filters", Reason::Missing)),
        [any] => {
            let hcm = decode(any).within("typed_config").at("filters", 0)?;
            http_connection_manager(&hcm)
                .within("typed_config")
                .at("filters", 0)
        }
        // Envoy refuses a terminal filter that is not last, which is what this would be.
        [_, ..] => Err(Rejection::new_at(
            "filters",
            0,
            Reason::Invalid(
                "the http_connection_manager is terminal: it must be the only network filter"
                    .into(),
            ),
        )),
    }
}

#[allow(deprecated)] // deprecated fields still change behaviour when set: they must be read
fn http_connection_manager(
    proto: &hcm_pb::HttpConnectionManager,
) -> Result<HttpSettings, Rejection> {
    use hcm_pb::http_connection_manager::{
        CodecType, ForwardClientCertDetails, PathWithEscapedSlashesAction, RouteSpecifier,
        ServerHeaderTransformation, StripPortMode,
    };
    let hcm_pb::HttpConnectionManager {
        codec_type,
        stat_prefix,
        http_filters,
        add_user_agent,
        tracing,
        common_http_protocol_options,
        http1_safe_max_connection_duration,
        http_protocol_options,
        http2_protocol_options,
        http3_protocol_options,
        server_name,
        server_header_transformation,
        scheme_header_transformation,
        max_request_headers_kb,
        stream_idle_timeout,
        stream_flush_timeout,
        request_timeout,
        request_headers_timeout,
        drain_timeout,
        drain_timeout_jitter,
        delayed_close_timeout,
        access_log,
        access_log_flush_interval,
        flush_access_log_on_new_request,
        access_log_options,
        use_remote_address,
        xff_num_trusted_hops,
        original_ip_detection_extensions,
        early_header_mutation_extensions,
        internal_address_config,
        skip_xff_append,
        via,
        generate_request_id,
        preserve_external_request_id,
        always_set_request_id_in_response,
        forward_client_cert_details,
        set_current_client_cert_details,
        forward_client_cert_matcher,
        proxy_100_continue,
        represent_ipv4_remote_address_as_ipv4_mapped_ipv6,
        upgrade_configs,
        normalize_path,
        merge_slashes,
        path_with_escaped_slashes_action,
        request_id_extension,
        local_reply_config,
        strip_matching_host_port,
        stream_error_on_invalid_http_message,
        path_normalization_options,
        strip_trailing_host_dot,
        proxy_status_config,
        typed_header_validation_config,
        append_x_forwarded_port,
        append_local_overload,
        // Only read with the proxy_protocol listener filter, which is not accepted.
        add_proxy_protocol_connection_state: _,
        forward_proto_config,
        route_specifier,
        strip_port_mode,
    } = proto;
    if stat_prefix.is_empty() {
        return Err(Rejection::new("stat_prefix", Reason::Missing));
    }
    reject_set(&[
        (add_user_agent.is_some_and(|v| v.value), "add_user_agent"),
        (tracing.is_some(), "tracing"),
        (
            *http1_safe_max_connection_duration,
            "http1_safe_max_connection_duration",
        ),
        (http3_protocol_options.is_some(), "http3_protocol_options"),
        (
            *server_header_transformation != ServerHeaderTransformation::Overwrite as i32,
            "server_header_transformation",
        ),
        (
            scheme_header_transformation.is_some(),
            "scheme_header_transformation",
        ),
        (stream_flush_timeout.is_some(), "stream_flush_timeout"),
        (drain_timeout_jitter.is_some(), "drain_timeout_jitter"),
        (delayed_close_timeout.is_some(), "delayed_close_timeout"),
        (
            access_log_flush_interval.is_some(),
            "access_log_flush_interval",
        ),
        (
            *flush_access_log_on_new_request,
            "flush_access_log_on_new_request",
        ),
        (access_log_options.is_some(), "access_log_options"),
        (
            !original_ip_detection_extensions.is_empty(),
            "original_ip_detection_extensions",
        ),
        (
            !early_header_mutation_extensions.is_empty(),
            "early_header_mutation_extensions",
        ),
        (internal_address_config.is_some(), "internal_address_config"),
        (!via.is_empty(), "via"),
        (
            *forward_client_cert_details != ForwardClientCertDetails::Sanitize as i32,
            "forward_client_cert_details",
        ),
        (
            set_current_client_cert_details.is_some(),
            "set_current_client_cert_details",
        ),
        (
            forward_client_cert_matcher.is_some(),
            "forward_client_cert_matcher",
        ),
        (*proxy_100_continue, "proxy_100_continue"),
        (
            *represent_ipv4_remote_address_as_ipv4_mapped_ipv6,
            "represent_ipv4_remote_address_as_ipv4_mapped_ipv6",
        ),
        (request_id_extension.is_some(), "request_id_extension"),
        (local_reply_config.is_some(), "local_reply_config"),
        (*strip_matching_host_port, "strip_matching_host_port"),
        (
            stream_error_on_invalid_http_message.is_some(),
            "stream_error_on_invalid_http_message",
        ),
        (
            path_normalization_options.is_some(),
            "path_normalization_options",
        ),
        (*strip_trailing_host_dot, "strip_trailing_host_dot"),
        (proxy_status_config.is_some(), "proxy_status_config"),
        (
            typed_header_validation_config.is_some(),
            "typed_header_validation_config",
        ),
        (*append_x_forwarded_port, "append_x_forwarded_port"),
        (*append_local_overload, "append_local_overload"),
        (forward_proto_config.is_some(), "forward_proto_config"),
        (
            matches!(strip_port_mode, Some(StripPortMode::StripAnyHostPort(true))),
            "strip_any_host_port",
        ),
    ])?;
    // Envoy's default (IMPLEMENTATION_SPECIFIC_DEFAULT) is to keep escaped slashes.
    match PathWithEscapedSlashesAction::try_from(*path_with_escaped_slashes_action) {
        Ok(
            PathWithEscapedSlashesAction::ImplementationSpecificDefault
            | PathWithEscapedSlashesAction::KeepUnchanged,
        ) => {}
        Ok(action) => {
            return Err(Rejection::new(
                "path_with_escaped_slashes_action",
                Reason::UnsupportedValue(action.as_str_name().to_owned()),
            ));
        }
        Err(_) => {
            return Err(Rejection::new(
                "path_with_escaped_slashes_action",
                Reason::Invalid(format!("unknown action {path_with_escaped_slashes_action}")),
            ));
        }
    }
    if let Some(options) = http_protocol_options {
        http1_options(options).within("http_protocol_options")?;
    }
    if let Some(options) = http2_protocol_options {
        http2_options(options).within("http2_protocol_options")?;
    }
    let common = match common_http_protocol_options {
        Some(options) => common_options(options).within("common_http_protocol_options")?,
        None => CommonOptions {
            connection_idle: Some(DEFAULT_CONNECTION_IDLE_TIMEOUT),
            max_connection_duration: None,
            max_stream_duration: None,
            max_headers_count: DEFAULT_MAX_HEADERS_COUNT,
        },
    };

    let codec = match CodecType::try_from(*codec_type) {
        Ok(CodecType::Auto) => Codec::Auto,
        Ok(CodecType::Http1) => Codec::Http1,
        Ok(CodecType::Http2) => Codec::Http2,
        Ok(CodecType::Http3) => {
            return Err(Rejection::new(
                "codec_type",
                Reason::UnsupportedValue("HTTP3".into()),
            ));
        }
        Err(_) => {
            return Err(Rejection::new(
                "codec_type",
                Reason::Invalid(format!("unknown codec type {codec_type}")),
            ));
        }
    };
    let route_config_name = match route_specifier {
        Some(RouteSpecifier::Rds(rds)) => self::rds(rds).within("rds")?,
        // Inline routes would bypass RDS validation and updates; only RDS for now.
        Some(RouteSpecifier::RouteConfig(_)) => {
            return Err(Rejection::unsupported("route_config"));
        }
        Some(RouteSpecifier::ScopedRoutes(_)) => {
            return Err(Rejection::unsupported("scoped_routes"));
        }
        None => return Err(Rejection::new("rds", Reason::Missing)),
    };
    let http_filters = self::http_filters(http_filters)?;

    let max_request_headers_kb = match max_request_headers_kb {
        None => DEFAULT_MAX_REQUEST_HEADERS_KB,
        Some(kb) if (1..=MAX_REQUEST_HEADERS_KB).contains(&kb.value) => kb.value,
        Some(kb) => {
            return Err(Rejection::new(
                "max_request_headers_kb",
                Reason::Invalid(format!(
                    "{} is not between 1 and {MAX_REQUEST_HEADERS_KB}",
                    kb.value
                )),
            ));
        }
    };
    let timeouts = HttpTimeouts {
        stream_idle: timeout(
            stream_idle_timeout,
            Some(DEFAULT_STREAM_IDLE_TIMEOUT),
            "stream_idle_timeout",
        )?,
        request: timeout(request_timeout, None, "request_timeout")?,
        request_headers: timeout(request_headers_timeout, None, "request_headers_timeout")?,
        max_stream_duration: common.max_stream_duration,
        connection_idle: common.connection_idle,
        max_connection_duration: common.max_connection_duration,
        drain: drain_timeout
            .as_ref()
            .map(duration)
            .transpose()
            .map_err(|r| Rejection::new("drain_timeout", r))?
            .unwrap_or(DEFAULT_DRAIN_TIMEOUT),
    };
    let websocket = upgrades(upgrade_configs)?;
    let access_log = access_log::access_logs(access_log)?;
    Ok(HttpSettings {
        stat_prefix: stat_prefix.clone(),
        route_config_name,
        codec,
        http_filters,
        use_remote_address: use_remote_address.is_some_and(|v| v.value),
        xff_num_trusted_hops: *xff_num_trusted_hops,
        skip_xff_append: *skip_xff_append,
        generate_request_id: generate_request_id.is_none_or(|v| v.value),
        preserve_external_request_id: *preserve_external_request_id,
        always_set_request_id_in_response: *always_set_request_id_in_response,
        normalize_path: normalize_path.is_some_and(|v| v.value),
        merge_slashes: *merge_slashes,
        server_name: (!server_name.is_empty()).then(|| server_name.clone()),
        timeouts,
        max_request_headers_kb,
        max_headers_count: common.max_headers_count,
        websocket,
        access_log,
    })
}

/// Reads `upgrade_configs`: WebSocket, with no upgrade-specific filters and enabled, is the one
/// upgrade implemented; returns whether it is on.
fn upgrades(configs: &[hcm_pb::http_connection_manager::UpgradeConfig]) -> Result<bool, Rejection> {
    let mut websocket = false;
    for (i, config) in configs.iter().enumerate() {
        let hcm_pb::http_connection_manager::UpgradeConfig {
            upgrade_type,
            filters,
            enabled,
        } = config;
        if !upgrade_type.eq_ignore_ascii_case("websocket") {
            return Err(Rejection::new(
                "upgrade_type",
                Reason::UnsupportedValue(format!("{upgrade_type:?} (only websocket is)")),
            )
            .at("upgrade_configs", i));
        }
        if !filters.is_empty() {
            return Err(Rejection::unsupported("filters").at("upgrade_configs", i));
        }
        if enabled.as_ref().is_some_and(|e| !e.value) {
            // Disabled here and enabled per route is route-level upgrade config, which the
            // route table does not implement.
            return Err(Rejection::new(
                "enabled",
                Reason::UnsupportedValue("false (per-route upgrades are not supported)".to_owned()),
            )
            .at("upgrade_configs", i));
        }
        websocket = true;
    }
    Ok(websocket)
}

fn rds(proto: &hcm_pb::Rds) -> Result<String, Rejection> {
    let hcm_pb::Rds {
        config_source,
        route_config_name,
    } = proto;
    let source = config_source
        .as_ref()
        .ok_or_else(|| Rejection::new("config_source", Reason::Missing))?;
    ads_config_source(source).within("config_source")?;
    if route_config_name.is_empty() {
        return Err(Rejection::new("route_config_name", Reason::Missing));
    }
    Ok(route_config_name.clone())
}

/// The HTTP filters, in order; the router, which Envoy requires to be last.
fn http_filters(filters: &[hcm_pb::HttpFilter]) -> Result<Vec<HttpFilter>, Rejection> {
    if filters.is_empty() {
        return Err(Rejection::new("http_filters", Reason::Missing));
    }
    let mut out = Vec::with_capacity(filters.len());
    for (i, filter) in filters.iter().enumerate() {
        let filter = http_filter(filter).at("http_filters", i)?;
        let last = i + 1 == filters.len();
        // The router is terminal: a filter after it would never run, and Envoy refuses it;
        // without it at the end nothing would answer.
        if filter.is_router() != last {
            let reason = if last {
                "the last filter must be the router (envoy.extensions.filters.http.router.v3.Router)"
            } else {
                "the router is terminal: it must be the last filter"
            };
            return Err(Rejection::new_at(
                "http_filters",
                i,
                Reason::Invalid(reason.into()),
            ));
        }
        out.push(filter);
    }
    Ok(out)
}

fn http_filter(proto: &hcm_pb::HttpFilter) -> Result<HttpFilter, Rejection> {
    use hcm_pb::http_filter::ConfigType;
    let hcm_pb::HttpFilter {
        name,
        // Only lets Envoy skip a filter type it does not know; every accepted type is known.
        is_optional: _,
        disabled,
        config_type,
    } = proto;
    if name.is_empty() {
        return Err(Rejection::new("name", Reason::Missing));
    }
    // Disabled here and enabled per route would need the routes' `FilterConfig`s to turn
    // filters on; only turning them off is implemented.
    reject_if(*disabled, "disabled")?;
    let any = match config_type {
        Some(ConfigType::TypedConfig(any)) => any,
        None => return Err(Rejection::new("typed_config", Reason::Missing)),
        Some(ConfigType::ConfigDiscovery(_)) => {
            return Err(Rejection::unsupported("config_discovery"));
        }
    };
    let kind = super::filters::http_filter_kind(name, any, router)?;
    Ok(HttpFilter {
        name: name.clone(),
        kind,
    })
}

#[allow(deprecated)] // deprecated fields still change behaviour when set: they must be read
fn router(proto: &router_pb::Router) -> Result<(), Rejection> {
    let router_pb::Router {
        // Stats only.
        dynamic_stats: _,
        // Only matters with tracing, which is not accepted.
        start_child_span: _,
        upstream_log,
        upstream_log_options,
        suppress_envoy_headers,
        strict_check_headers,
        respect_expected_rq_timeout,
        // Stats only.
        suppress_grpc_request_failure_code_stats: _,
        upstream_http_filters,
        reject_connect_request_early_data,
    } = proto;
    reject_set(&[
        (!upstream_log.is_empty(), "upstream_log"),
        (upstream_log_options.is_some(), "upstream_log_options"),
        (*suppress_envoy_headers, "suppress_envoy_headers"),
        (!strict_check_headers.is_empty(), "strict_check_headers"),
        (*respect_expected_rq_timeout, "respect_expected_rq_timeout"),
        (!upstream_http_filters.is_empty(), "upstream_http_filters"),
        (
            reject_connect_request_early_data.is_some(),
            "reject_connect_request_early_data",
        ),
    ])
}

/// What `common_http_protocol_options` configure, defaults applied.
struct CommonOptions {
    connection_idle: Option<Duration>,
    max_connection_duration: Option<Duration>,
    max_stream_duration: Option<Duration>,
    max_headers_count: u32,
}

fn common_options(proto: &core_pb::HttpProtocolOptions) -> Result<CommonOptions, Rejection> {
    use core_pb::http_protocol_options::HeadersWithUnderscoresAction;
    let core_pb::HttpProtocolOptions {
        idle_timeout,
        max_connection_duration,
        max_connection_duration_jitter,
        max_headers_count,
        max_response_headers_kb,
        max_stream_duration,
        headers_with_underscores_action,
        max_requests_per_connection,
    } = proto;
    reject_set(&[
        (
            max_connection_duration_jitter.is_some(),
            "max_connection_duration_jitter",
        ),
        // Applies to upstream responses, not to a listener.
        (max_response_headers_kb.is_some(), "max_response_headers_kb"),
        (
            *headers_with_underscores_action != HeadersWithUnderscoresAction::Allow as i32,
            "headers_with_underscores_action",
        ),
        (
            max_requests_per_connection.is_some(),
            "max_requests_per_connection",
        ),
    ])?;
    let max_headers_count = match max_headers_count {
        None => DEFAULT_MAX_HEADERS_COUNT,
        Some(count) if count.value >= 1 => count.value,
        Some(_) => {
            return Err(Rejection::new(
                "max_headers_count",
                Reason::Invalid("must be at least 1".into()),
            ));
        }
    };
    Ok(CommonOptions {
        connection_idle: timeout(
            idle_timeout,
            Some(DEFAULT_CONNECTION_IDLE_TIMEOUT),
            "idle_timeout",
        )?,
        max_connection_duration: timeout(max_connection_duration, None, "max_connection_duration")?,
        max_stream_duration: timeout(max_stream_duration, None, "max_stream_duration")?,
        max_headers_count,
    })
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Whether `any` holds a `T`. Envoy reads only the part of the type URL after the last `/`.
pub(super) fn is_type<T: Name>(any: &pb::Any) -> bool {
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    name == T::full_name()
}

pub(super) fn decode<T: Message + Default>(any: &pb::Any) -> Result<T, Rejection> {
    T::decode(any.value.as_slice()).map_err(|e| {
        Rejection::new(
            "value",
            Reason::Invalid(format!("undecodable {}: {e}", any.type_url)),
        )
    })
}

/// An extension (listener, network or HTTP filter, transport socket) whose config type this
/// proxy does not implement. The message names the extension as configured and its type.
pub(super) fn unsupported_extension(kind: &str, name: &str, any: &pb::Any) -> Rejection {
    Rejection::new(
        "typed_config",
        Reason::UnsupportedValue(format!("{kind} {name:?} ({})", any.type_url)),
    )
}

/// A timeout: `default` when unset, `None` (no timeout) when zero, as Envoy reads them.
fn timeout(
    proto: &Option<pb::Duration>,
    default: Option<Duration>,
    field: &'static str,
) -> Result<Option<Duration>, Rejection> {
    match proto {
        None => Ok(default),
        Some(d) => duration(d)
            .map(|d| (!d.is_zero()).then_some(d))
            .map_err(|r| Rejection::new(field, r)),
    }
}

fn duration(d: &pb::Duration) -> Result<Duration, Reason> {
    let (Ok(secs), Ok(nanos)) = (u64::try_from(d.seconds), u32::try_from(d.nanos)) else {
        return Err(Reason::Invalid("must not be negative".into()));
    };
    if nanos >= 1_000_000_000 {
        return Err(Reason::Invalid("nanos must be below one second".into()));
    }
    Ok(Duration::new(secs, nanos))
}

#[cfg(test)]
pub(crate) mod tests;
