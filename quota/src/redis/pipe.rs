//! A pipelined RESP2 connection to one plain-TCP Redis server, for the decision hot path.
//!
//! Every global decision is one script call, so this is where a quota's cost per request sits.
//! redis-rs's multiplexed connection is general: each call builds a `Cmd`, packs it into a
//! buffer of its own, boxes a future, hops through a channel and a oneshot to the connection's
//! task, and parses the reply with a combinator parser into a tree of `Value`s. Here a call
//! encodes its command straight into the shared output buffer and waits on a oneshot; one task
//! writes whatever has built up in one `write`, and one task reads replies and hands each to the
//! call at the front of the queue. Script replies (five integers) are parsed without
//! allocating.
//!
//! Order is the whole protocol: a call appends its bytes and queues its reply slot under one
//! lock, so the queue is in the order the bytes go out, which is the order Redis answers in.
//! When the connection fails, every waiting call fails with it and so does every later call;
//! the link then opens a new connection (see `link.rs`). TLS, Sentinel and Cluster targets
//! use redis-rs.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use redis::{ErrorKind, RedisError, RedisResult, ServerErrorKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

use super::scripts::Reply;

/// A reply as far as the quota needs to understand one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A script's five integers.
    Script(Reply),
    /// A status (`+OK`, `+PONG`).
    Status(String),
    /// An error reply: its text, code first (`NOSCRIPT No matching script…`).
    Error(String),
    /// Anything else, by its RESP type.
    Other(&'static str),
}

/// Where a call's reply goes.
type Slot = oneshot::Sender<RedisResult<Frame>>;

/// One connection; calls may be made from any task, concurrently.
pub(crate) struct Pipe {
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer: bytes are waiting, or the connection failed.
    output: Notify,
}

#[derive(Default)]
struct State {
    /// Commands not yet written, in call order.
    output: Vec<u8>,
    /// Reply slots of the commands written or waiting to be, in the same order.
    waiting: VecDeque<Slot>,
    /// Why the connection is unusable, once it is.
    failed: Option<String>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; the state stays consistent if it ever did.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the connection failed and fails every call waiting on it.
    fn fail(&self, why: String) {
        let waiting = {
            let mut state = self.lock();
            if state.failed.is_none() {
                state.failed = Some(why.clone());
            }
            state.output.clear();
            std::mem::take(&mut state.waiting)
        };
        for slot in waiting {
            let _ = slot.send(Err(closed(&why)));
        }
        self.output.notify_one();
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

impl Pipe {
    /// Connects to `host:port` and starts the connection's reader and writer tasks. The caller
    /// bounds the time this may take.
    pub(crate) async fn connect(host: &str, port: u16) -> RedisResult<Self> {
        let stream = TcpStream::connect((host, port)).await?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            output: Notify::new(),
        });
        Ok(Self {
            reader: tokio::spawn(read_replies(read, Arc::clone(&shared))),
            writer: tokio::spawn(write_commands(write, Arc::clone(&shared))),
            shared,
        })
    }

    /// Sends one command whose arguments are `words` followed by `numbers`, and waits for its
    /// reply. An error reply is a [`RedisError`] of the server's kind (so `NOSCRIPT` is one).
    pub(crate) async fn call(&self, words: &[&[u8]], numbers: &[u64]) -> RedisResult<Frame> {
        let (slot, reply) = oneshot::channel();
        let wake = {
            let mut state = self.shared.lock();
            if let Some(why) = &state.failed {
                return Err(closed(why));
            }
            let was_empty = state.output.is_empty();
            encode(&mut state.output, words, numbers);
            state.waiting.push_back(slot);
            was_empty
        };
        // The writer takes everything that built up; it only needs waking for the first.
        if wake {
            self.shared.output.notify_one();
        }
        match reply.await {
            Ok(Ok(Frame::Error(text))) => Err(server_error(text)),
            Ok(result) => result,
            Err(_) => Err(closed("the connection's reader stopped")),
        }
    }
}

/// Appends one command in RESP: an array of bulk strings.
fn encode(out: &mut Vec<u8>, words: &[&[u8]], numbers: &[u64]) {
    let mut digits = itoa::Buffer::new();
    out.push(b'*');
    out.extend_from_slice(digits.format(words.len() + numbers.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    let bulk = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.push(b'$');
        out.extend_from_slice(itoa::Buffer::new().format(bytes.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
    };
    for word in words {
        bulk(out, word);
    }
    for &number in numbers {
        bulk(out, digits.format(number).as_bytes());
    }
}

async fn write_commands(mut socket: OwnedWriteHalf, shared: Arc<Shared>) {
    let mut batch = Vec::with_capacity(16 * 1024);
    loop {
        shared.output.notified().await;
        {
            let mut state = shared.lock();
            if state.failed.is_some() {
                return;
            }
            // Swap buffers: calls go on appending to the (empty, allocated) other one.
            std::mem::swap(&mut state.output, &mut batch);
        }
        if batch.is_empty() {
            continue;
        }
        if let Err(error) = socket.write_all(&batch).await {
            shared.fail(format!("write: {error}"));
            return;
        }
        batch.clear();
    }
}

async fn read_replies(mut socket: OwnedReadHalf, shared: Arc<Shared>) {
    let mut buffer: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut start = 0;
    loop {
        // Keep the unparsed tail at the front, so the buffer does not grow without bound.
        if start > 0 {
            buffer.drain(..start);
            start = 0;
        }
        match socket.read_buf(&mut buffer).await {
            Ok(0) => return shared.fail("closed by the server".to_owned()),
            Ok(_) => {}
            Err(error) => return shared.fail(format!("read: {error}")),
        }
        loop {
            let (frame, used) = match parse(&buffer[start..]) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => break,
                Err(why) => return shared.fail(why.to_owned()),
            };
            start += used;
            let slot = shared.lock().waiting.pop_front();
            match slot {
                // A call that gave up (its deadline passed) dropped its receiver.
                Some(slot) => {
                    let _ = slot.send(Ok(frame));
                }
                None => return shared.fail("a reply nobody asked for".to_owned()),
            }
        }
        if buffer.capacity() - buffer.len() < 4096 {
            buffer.reserve(16 * 1024);
        }
    }
}

/// Parses one reply at the start of `input`: the frame and the bytes it took, `None` when the
/// reply is not complete yet, or why the bytes are not RESP.
fn parse(input: &[u8]) -> Result<Option<(Frame, usize)>, &'static str> {
    let Some((kind, line, mut used)) = next_line(input) else {
        return Ok(None);
    };
    let text = || String::from_utf8_lossy(line).into_owned();
    let frame = match kind {
        b'+' => Frame::Status(text()),
        b'-' => Frame::Error(text()),
        b':' => Frame::Other("integer"),
        b'$' => match skip_bulk(line, &input[used..])? {
            Some(body) => {
                used += body;
                Frame::Other("bulk string")
            }
            None => return Ok(None),
        },
        b'*' => {
            let count = integer(line)?;
            let mut numbers = [0i64; 5];
            let mut all_integers = count == 5;
            for i in 0..count.max(0) {
                let rest = &input[used..];
                if let Some((b':', element, took)) = next_line(rest) {
                    if let Some(slot) = numbers.get_mut(i as usize) {
                        *slot = integer(element)?;
                    }
                    used += took;
                    continue;
                }
                all_integers = false;
                match parse(rest)? {
                    Some((_, took)) => used += took,
                    None => return Ok(None),
                }
            }
            if all_integers {
                Frame::Script((numbers[0], numbers[1], numbers[2], numbers[3], numbers[4]))
            } else {
                Frame::Other("array")
            }
        }
        _ => return Err("not a RESP2 reply"),
    };
    Ok(Some((frame, used)))
}

/// The type byte, the line after it (without CRLF), and the bytes up to the next line.
fn next_line(input: &[u8]) -> Option<(u8, &[u8], usize)> {
    let (&kind, rest) = input.split_first()?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((kind, &rest[..end], end + 3))
}

/// The bytes a bulk string's body takes after its header line (`$-1` has none), or `None`
/// when not all of it is there yet.
fn skip_bulk(header: &[u8], rest: &[u8]) -> Result<Option<usize>, &'static str> {
    let length = integer(header)?;
    if length < 0 {
        return Ok(Some(0));
    }
    let needed = length as usize + 2;
    Ok((rest.len() >= needed).then_some(needed))
}

fn integer(digits: &[u8]) -> Result<i64, &'static str> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or("a malformed integer")
}

/// The error of a call on a failed connection: an I/O error, which the link treats as the
/// connection being gone.
fn closed(why: &str) -> RedisError {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        format!("redis connection failed: {why}"),
    )
    .into()
}

/// An error reply as redis-rs would report it, so that the link and the scripts tell the
/// kinds apart in one way whatever the connection.
fn server_error(text: String) -> RedisError {
    let code = text.split(' ').next().unwrap_or_default();
    let (kind, description) = match code {
        "NOSCRIPT" => (ServerErrorKind::NoScript, "NOSCRIPT"),
        "READONLY" => (ServerErrorKind::ReadOnly, "READONLY"),
        "LOADING" => (ServerErrorKind::BusyLoading, "LOADING"),
        "MASTERDOWN" => (ServerErrorKind::MasterDown, "MASTERDOWN"),
        "CLUSTERDOWN" => (ServerErrorKind::ClusterDown, "CLUSTERDOWN"),
        "NOPERM" => (ServerErrorKind::NoPerm, "NOPERM"),
        _ => (ServerErrorKind::ResponseError, "error reply"),
    };
    RedisError::from((ErrorKind::Server(kind), description, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(input: &[u8]) -> Option<(Frame, usize)> {
        parse(input).unwrap()
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode(
            &mut out,
            &[b"EVALSHA", b"abc", b"1", b"k"],
            &[0, 18_446_744_073_709_551_615],
        );
        assert_eq!(
            out,
            b"*6\r\n$7\r\nEVALSHA\r\n$3\r\nabc\r\n$1\r\n1\r\n$1\r\nk\r\n$1\r\n0\r\n\
              $20\r\n18446744073709551615\r\n"
        );
    }

    #[test]
    fn script_replies_statuses_and_errors_parse_and_partial_input_waits() {
        let script = b"*5\r\n:1\r\n:99\r\n:600000\r\n:-1\r\n:1\r\n";
        assert_eq!(
            parsed(script),
            Some((Frame::Script((1, 99, 600_000, -1, 1)), script.len()))
        );
        for cut in 0..script.len() {
            assert_eq!(parsed(&script[..cut]), None, "cut at {cut}");
        }
        assert_eq!(
            parsed(b"+PONG\r\n:1\r\n"),
            Some((Frame::Status("PONG".into()), 7))
        );
        assert_eq!(
            parsed(b"-NOSCRIPT No matching script.\r\n"),
            Some((Frame::Error("NOSCRIPT No matching script.".into()), 31))
        );
        // Other shapes are skipped whole, so the next reply is found.
        let nested = b"*2\r\n$3\r\nabc\r\n*1\r\n$-1\r\n+OK\r\n";
        assert_eq!(
            parsed(nested),
            Some((Frame::Other("array"), nested.len() - 5))
        );
        assert_eq!(parsed(b"$5\r\nab"), None);
        assert!(parse(b"!oops\r\n").is_err());
    }

    #[test]
    fn error_replies_keep_their_kind() {
        let noscript = server_error("NOSCRIPT No matching script.".into());
        assert_eq!(
            noscript.kind(),
            ErrorKind::Server(ServerErrorKind::NoScript)
        );
        let readonly = server_error("READONLY You can't write against a read only replica.".into());
        assert_eq!(
            readonly.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly)
        );
        assert!(closed("gone").is_io_error());
    }
}
