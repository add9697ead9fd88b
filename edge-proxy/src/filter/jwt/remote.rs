//! Remote JWKS: fetched through the proxy's own upstream cluster (so it follows CDS/EDS, TLS
//! and health like any route), cached per provider, refreshed.
//!
//! - On demand (no `async_fetch`): a request that needs keys the cache does not have, or has
//!   past `cache_duration`, fetches them and waits, as Envoy's first requests do. Only one fetch
//!   per provider runs at a time; requests that queued behind it take its result instead of
//!   fetching again. Requests for other providers, and requests without tokens, never wait.
//! - `async_fetch`: a background task fetches when the data plane starts using the config and
//!   every `cache_duration` after, or `failed_refetch_duration` after a failure. Requests use
//!   what it fetched and never wait, unless there is nothing yet.
//! - Key rotation (a Tollgate addition, Envoy 1.40 has no such option): a token whose `kid`
//!   (or `alg`) no cached key has triggers one refetch, at most once per
//!   [`KID_MISS_REFETCH_INTERVAL`] per provider, then is verified again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{Request, StatusCode, Uri, Version, header};
use http_body_util::{BodyExt, Either, Full, Limited};

use super::jwks::JwkSet;
use crate::config::cluster::UpstreamProtocol;
use crate::config::filters::jwt_authn::RemoteJwks;
use crate::proxy::SharedDataPlane;
use crate::upstream::{Upstreams, now_ms};

/// A token with an unknown `kid` refetches the keys at most this often per provider.
pub const KID_MISS_REFETCH_INTERVAL: Duration = Duration::from_secs(10);

/// The largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// The keys of one remote provider, and the fetch that refreshes them.
#[derive(Default)]
pub struct JwksCache {
    current: ArcSwapOption<Cached>,
    /// Held while fetching: one fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    /// Fetches completed so far, and whether the last succeeded: a request that waited for
    /// the lock takes that result rather than fetching again.
    completed: AtomicU64,
    last_ok: AtomicBool,
    /// When the last fetch started ([`now_ms`]; 0: never), for the kid-miss bound.
    last_started_ms: AtomicU64,
    background: OnceLock<()>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache")
            .field("keys", &self.current.load().as_ref().map(|c| c.jwks.len()))
            .field("fetches", &self.completed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Cached {
    jwks: Arc<JwkSet>,
    /// [`now_ms`] after which the keys must be fetched again; `u64::MAX` for background ones.
    expires_ms: u64,
}

/// Why a fetch failed; every cause answers requests with "Jwks remote fetch is failed".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// `http_uri.cluster` is not a cluster of the current config.
    #[error("cluster {0} not found")]
    NoCluster(String),
    /// The cluster has no endpoint that may take traffic, or its breaker is open.
    #[error("no healthy upstream")]
    NoUpstream,
    /// The exchange failed or timed out.
    #[error("fetch failed: {0}")]
    Http(String),
    /// The server answered something other than 200.
    #[error("status {0}")]
    Status(StatusCode),
    /// The body is not a usable JWKS.
    #[error("invalid JWKS: {0}")]
    Invalid(String),
}

impl JwksCache {
    /// The keys if they are still fresh.
    pub fn fresh(&self) -> Option<Arc<JwkSet>> {
        let cached = self.current.load();
        let cached = cached.as_ref()?;
        (now_ms() < cached.expires_ms).then(|| Arc::clone(&cached.jwks))
    }

    /// Whether a kid miss may refetch now.
    pub fn may_refetch_for_kid(&self) -> bool {
        let last = self.last_started_ms.load(Ordering::Relaxed);
        last == 0 || now_ms().saturating_sub(last) >= KID_MISS_REFETCH_INTERVAL.as_millis() as u64
    }

    /// Makes the last fetch look older than [`KID_MISS_REFETCH_INTERVAL`].
    #[cfg(test)]
    pub(crate) fn pretend_last_fetch_is_old(&self) {
        self.last_started_ms.store(0, Ordering::Relaxed);
    }

    /// How many fetches have completed; see [`JwksCache::refresh`].
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Acquire)
    }

    /// Fetches the keys unless a fetch completed since `seen` (the caller's
    /// [`JwksCache::completed`]), in which case that fetch's result is returned.
    pub async fn refresh(
        &self,
        remote: &RemoteJwks,
        upstreams: &Upstreams,
        seen: u64,
    ) -> Result<Arc<JwkSet>, FetchError> {
        let _fetching = self.fetching.lock().await;
        if self.completed() != seen {
            return match (
                self.last_ok.load(Ordering::Acquire),
                self.current.load_full(),
            ) {
                (true, Some(cached)) => Ok(Arc::clone(&cached.jwks)),
                _ => Err(FetchError::Http("the concurrent fetch failed".into())),
            };
        }
        self.fetch_now(remote, upstreams).await
    }

    /// Fetches and stores, under the fetch lock held by the caller.
    async fn fetch_now(
        &self,
        remote: &RemoteJwks,
        upstreams: &Upstreams,
    ) -> Result<Arc<JwkSet>, FetchError> {
        self.last_started_ms
            .store(now_ms().max(1), Ordering::Relaxed);
        let result = fetch(remote, upstreams).await.map(Arc::new);
        match &result {
            Ok(jwks) => {
                let expires_ms = if remote.async_fetch.is_some() {
                    // The background task refreshes them; requests never expire them.
                    u64::MAX
                } else {
                    now_ms().saturating_add(remote.cache_duration.as_millis() as u64)
                };
                self.current.store(Some(Arc::new(Cached {
                    jwks: Arc::clone(jwks),
                    expires_ms,
                })));
                tracing::debug!(uri = %remote.uri, keys = jwks.len(), "JWKS fetched");
            }
            Err(error) => {
                tracing::warn!(uri = %remote.uri, cluster = %remote.cluster, %error, "JWKS fetch failed");
            }
        }
        self.last_ok.store(result.is_ok(), Ordering::Release);
        self.completed.fetch_add(1, Ordering::AcqRel);
        result
    }
}

/// Starts the background refresh of `remote` (an `async_fetch` provider), once per config
/// object; the task ends when the config is dropped.
pub(crate) fn start_background(remote: &Arc<RemoteJwks>, plane: &SharedDataPlane) {
    let Some(failed_refetch) = remote.async_fetch else {
        return;
    };
    if remote.cache.background.set(()).is_err() {
        return;
    }
    let weak = Arc::downgrade(remote);
    let plane = Arc::clone(plane);
    tokio::spawn(refresh_forever(weak, plane, failed_refetch));
}

async fn refresh_forever(
    remote: Weak<RemoteJwks>,
    plane: SharedDataPlane,
    failed_refetch: Duration,
) {
    loop {
        let Some(remote) = remote.upgrade() else {
            return;
        };
        let wait = match plane.load_full() {
            Some(current) => {
                let _fetching = remote.cache.fetching.lock().await;
                match remote.cache.fetch_now(&remote, &current.upstreams).await {
                    Ok(_) => remote.cache_duration,
                    Err(_) => failed_refetch,
                }
            }
            None => failed_refetch,
        };
        drop(remote);
        tokio::time::sleep(wait).await;
    }
}

/// One GET of the JWKS through the cluster: an endpoint from its balancer, its pooled
/// connection (TLS when the cluster has it), `Host` from the URI.
pub async fn fetch(remote: &RemoteJwks, upstreams: &Upstreams) -> Result<JwkSet, FetchError> {
    let cluster = upstreams
        .get(&remote.cluster)
        .ok_or_else(|| FetchError::NoCluster(remote.cluster.clone()))?;
    let _slot = cluster.try_start_request().ok_or(FetchError::NoUpstream)?;
    let (endpoint, _active) = cluster.pick(None).ok_or(FetchError::NoUpstream)?;
    let authority = remote
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let path = remote
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let uri = Uri::builder()
        .scheme(if cluster.config.tls.is_some() {
            "https"
        } else {
            "http"
        })
        .authority(authority.as_str())
        .path_and_query(path.as_str())
        .build()
        .map_err(|e| FetchError::Http(e.to_string()))?;
    let http2 = cluster.config.protocol == UpstreamProtocol::Http2;
    let mut request = Request::get(uri)
        .version(if http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        })
        .body(Either::Right(Full::new(Bytes::new())))
        .map_err(|e| FetchError::Http(e.to_string()))?;
    if !http2 && let Ok(host) = http::HeaderValue::try_from(authority.as_str()) {
        request.headers_mut().insert(header::HOST, host);
    }
    let exchange = async {
        let sent = endpoint
            .client()
            .send(request)
            .await
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let response = sent.response;
        if response.status() != StatusCode::OK {
            return Err(FetchError::Status(response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| FetchError::Http(e.to_string()))?
            .to_bytes();
        // Read to its end: the connection can serve the next fetch.
        if let Some(connection) = sent.connection {
            connection.release();
        }
        JwkSet::parse(&body).map_err(|e| FetchError::Invalid(e.to_string()))
    };
    match tokio::time::timeout(remote.timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(FetchError::Http(format!(
            "timed out after {:?}",
            remote.timeout
        ))),
    }
}
