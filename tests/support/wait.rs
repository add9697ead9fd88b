//! Polling with a deadline (like linkerd's `assert_eventually!`), used instead of sleeps to
//! wait for processes to become ready and for config to reach the proxies.

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

/// How often the helpers here poll.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Polls `f` every 50 ms until it returns `Ok`, and returns that value.
///
/// # Panics
///
/// After `timeout`, with `what` and the last error; at once if `f` returns a [`GiveUp`].
pub async fn eventually<F, Fut, T>(what: &str, timeout: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    match try_eventually(what, timeout, f).await {
        Ok(value) => value,
        Err(e) => panic!("{e:#}"),
    }
}

/// Like [`eventually`], but returns the timeout as an error instead of panicking.
///
/// Stops early, returning the error, when `f` fails with a [`GiveUp`] (e.g. the process it
/// waits for exited).
pub async fn try_eventually<F, Fut, T>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let start = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match f().await {
            Ok(value) => return Ok(value),
            Err(e) if e.is::<GiveUp>() => {
                return Err(e.context(format!("gave up waiting for {what}")));
            }
            Err(e) if start.elapsed() >= timeout => {
                return Err(e.context(format!(
                    "timed out after {timeout:?} ({attempts} attempts) waiting for {what}; last error"
                )));
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// An error that makes [`eventually`] / [`try_eventually`] stop polling at once.
#[derive(Debug)]
pub struct GiveUp(pub String);

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GiveUp {}

/// Builds a [`GiveUp`] error to return from a polled closure.
pub fn give_up(message: impl Into<String>) -> anyhow::Error {
    GiveUp(message.into()).into()
}

/// `GET url` and succeed only on a 2xx status (no proxy, 2 s timeout).
pub async fn http_ok(url: &str) -> anyhow::Result<()> {
    // A client per call: a pooled connection must not outlive the runtime of the test that
    // opened it, and each `#[tokio::test]` has its own runtime.
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;
    let response = client.get(url).send().await?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    anyhow::bail!("GET {url}: {status}: {body}")
}
