//! A pipelined RESP2 connection to one plain-TCP Redis server, for the decision hot path.
//!
//! Every global decision is a script call, so this is where a quota's cost per request sits,
//! in the proxy and in Redis. redis-rs's multiplexed connection is general: each call builds a
//! `Cmd`, packs it into a buffer of its own, boxes a future, hops through a channel and a
//! oneshot to the connection's task, and parses the reply with a combinator parser into a tree
//! of `Value`s. Here a call queues its request under a lock and waits on a oneshot; one task
//! writes whatever has built up in one `write`, and one task reads replies and hands each to
//! the call at the front of the queue. Integer replies are parsed without a tree of values.
//!
//! Decisions that wait to be written together are gathered into one script call per policy,
//! each key's decisions decided one after the other (see `scripts.rs`). In Redis a script call
//! costs about 2 µs of set-up before its first command, and it serves nothing else meanwhile,
//! so under load, when many requests of a policy wait at once, a proxy spends a fraction of a
//! call per decision, and Redis serves more proxies. Nothing waits to be gathered: the writer
//! sends what there is as soon as it runs, and only what arrived meanwhile shares a call.
//!
//! Order is the whole protocol: the writer encodes the commands and queues their reply slots
//! under one lock, so the queue is in the order the bytes go out, which is the order Redis
//! answers in. When the connection fails, every waiting call fails with it and so does every
//! later call; the link then opens a new connection (see `link.rs`). TLS, Sentinel and Cluster
//! targets use redis-rs, one decision per script call.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use redis::{ErrorKind, RedisError, RedisResult, ServerErrorKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

use super::scripts::{Reply, ScriptCall};

/// The most decisions one script call carries. Redis serves nothing else while a script runs,
/// so this bounds what one call can make other clients wait: about 1 µs per decision on one
/// key, 4 µs on distinct keys (`redis-benchmark`, README), so at most about 0.5 ms.
const MAX_DECISIONS_PER_CALL: usize = 128;

/// A reply as far as the quota needs to understand one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// An array of integers: a script's five per decision.
    Integers(Vec<i64>),
    /// A status (`+OK`, `+PONG`).
    Status(String),
    /// An error reply: its text, code first (`NOSCRIPT No matching script…`).
    Error(String),
    /// Anything else, by its RESP type.
    Other(&'static str),
}

/// Where a command's reply goes.
type Slot = oneshot::Sender<RedisResult<Frame>>;

/// Where one decision's reply goes.
type DecisionSlot = oneshot::Sender<RedisResult<Reply>>;

/// Decisions of one policy (equal [`ScriptCall`]s), sent as one script call.
struct Batch {
    call: ScriptCall,
    /// Each key once, with its decisions in the order they were asked for.
    keys: Vec<(Box<str>, Vec<DecisionSlot>)>,
    decisions: usize,
    /// Send the script's source (`EVAL`): the server did not have it (`NOSCRIPT`).
    with_source: bool,
}

impl Batch {
    fn new(call: ScriptCall) -> Self {
        Self {
            call,
            keys: Vec::new(),
            decisions: 0,
            with_source: false,
        }
    }

    fn add(&mut self, key: &str, slot: DecisionSlot) {
        self.decisions += 1;
        match self.keys.iter_mut().find(|(k, _)| **k == *key) {
            Some((_, slots)) => slots.push(slot),
            None => self.keys.push((key.into(), vec![slot])),
        }
    }

    /// Appends `EVALSHA sha K key… params… requests-per-key…` (or `EVAL source …`).
    fn encode(&self, out: &mut Vec<u8>) {
        let params = self.call.params();
        let keys = self.keys.len();
        encode_length(out, b'*', 3 + params.len() + 2 * keys);
        if self.with_source {
            encode_bulk(out, b"EVAL");
            encode_bulk(out, self.call.script.source.as_bytes());
        } else {
            encode_bulk(out, b"EVALSHA");
            encode_bulk(out, self.call.script.sha.as_bytes());
        }
        encode_number(out, keys as u64);
        for (key, _) in &self.keys {
            encode_bulk(out, key.as_bytes());
        }
        for &param in params {
            encode_number(out, param);
        }
        for (_, slots) in &self.keys {
            encode_number(out, slots.len() as u64);
        }
    }

    /// Hands each decision its five integers, keys in order.
    fn answer(self, frame: Frame) {
        match frame {
            Frame::Integers(numbers) if numbers.len() == 5 * self.decisions => {
                let slots = self.keys.into_iter().flat_map(|(_, slots)| slots);
                for (slot, n) in slots.zip(numbers.chunks_exact(5)) {
                    let _ = slot.send(Ok((n[0], n[1], n[2], n[3], n[4])));
                }
            }
            Frame::Error(text) => self.fail_each(|| server_error(&text)),
            other => self.fail_each(|| unexpected(&other)),
        }
    }

    fn fail_each(self, error: impl Fn() -> RedisError) {
        for (_, slots) in self.keys {
            for slot in slots {
                let _ = slot.send(Err(error()));
            }
        }
    }
}

/// What the reply at the front of the queue answers.
enum Waiter {
    Command(Slot),
    Decisions(Batch),
}

impl Waiter {
    fn fail(self, why: &str) {
        match self {
            Waiter::Command(slot) => {
                let _ = slot.send(Err(closed(why)));
            }
            Waiter::Decisions(batch) => batch.fail_each(|| closed(why)),
        }
    }
}

/// One connection; calls may be made from any task, concurrently.
pub(crate) struct Pipe {
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer: bytes or decisions are waiting, or the connection failed.
    output: Notify,
}

#[derive(Default)]
struct State {
    /// Commands not yet written, in call order.
    output: Vec<u8>,
    /// Decisions not yet written, by policy.
    pending: Vec<Batch>,
    /// What the commands written or waiting to be answer, in the order they go out.
    waiting: VecDeque<Waiter>,
    /// Why the connection is unusable, once it is.
    failed: Option<String>,
}

impl State {
    /// Whether the writer has nothing to take (so the next call must wake it).
    fn is_idle(&self) -> bool {
        self.output.is_empty() && self.pending.is_empty()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; the state stays consistent if it ever did.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the connection failed and fails every call waiting on it.
    fn fail(&self, why: String) {
        let (waiting, pending) = {
            let mut state = self.lock();
            if state.failed.is_none() {
                state.failed = Some(why.clone());
            }
            state.output.clear();
            (
                std::mem::take(&mut state.waiting),
                std::mem::take(&mut state.pending),
            )
        };
        for waiter in waiting {
            waiter.fail(&why);
        }
        for batch in pending {
            batch.fail_each(|| closed(&why));
        }
        self.output.notify_one();
    }

    /// Queues a command or decision with `add`, unless the connection failed, and wakes the
    /// writer if it had nothing to take: it takes everything that built up, so only the first
    /// needs waking.
    fn queue(&self, add: impl FnOnce(&mut State)) -> RedisResult<()> {
        let wake = {
            let mut state = self.lock();
            if let Some(why) = &state.failed {
                return Err(closed(why));
            }
            let wake = state.is_idle();
            add(&mut state);
            wake
        };
        if wake {
            self.output.notify_one();
        }
        Ok(())
    }

    /// Hands `frame` to what it answers.
    fn answer(&self, waiter: Waiter, frame: Frame) {
        match (waiter, frame) {
            (Waiter::Command(slot), frame) => {
                let _ = slot.send(Ok(frame));
            }
            // The server lost its scripts (restart, `SCRIPT FLUSH`, failover): send the same
            // decisions again with the source, which also caches it.
            (Waiter::Decisions(mut batch), Frame::Error(text))
                if !batch.with_source && text.starts_with("NOSCRIPT") =>
            {
                batch.with_source = true;
                let mut state = self.lock();
                if let Some(why) = &state.failed {
                    let why = why.clone();
                    drop(state);
                    return batch.fail_each(|| closed(&why));
                }
                state.pending.push(batch);
                drop(state);
                self.output.notify_one();
            }
            (Waiter::Decisions(batch), frame) => batch.answer(frame),
        }
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

    /// Sends one command whose arguments are `words`, and waits for its reply. An error reply
    /// is a [`RedisError`] of the server's kind.
    pub(crate) async fn call(&self, words: &[&[u8]]) -> RedisResult<Frame> {
        let (slot, reply) = oneshot::channel();
        self.shared.queue(|state| {
            encode_length(&mut state.output, b'*', words.len());
            for word in words {
                encode_bulk(&mut state.output, word);
            }
            state.waiting.push_back(Waiter::Command(slot));
        })?;
        match reply.await {
            Ok(Ok(Frame::Error(text))) => Err(server_error(&text)),
            Ok(result) => result,
            Err(_) => Err(closed("the connection's reader stopped")),
        }
    }

    /// Decides one request on `key` with `call`, in a script call shared with the decisions
    /// of the same policy that are waiting to be written with it.
    pub(crate) async fn decide(&self, call: &ScriptCall, key: &str) -> RedisResult<Reply> {
        let (slot, reply) = oneshot::channel();
        self.shared.queue(|state| {
            let batch = match state
                .pending
                .iter()
                .position(|b| b.call == *call && b.decisions < MAX_DECISIONS_PER_CALL)
            {
                Some(index) => &mut state.pending[index],
                None => {
                    state.pending.push(Batch::new(*call));
                    state.pending.last_mut().expect("just pushed")
                }
            };
            batch.add(key, slot);
        })?;
        reply
            .await
            .unwrap_or_else(|_| Err(closed("the connection's reader stopped")))
    }
}

/// Appends a RESP length line: `*3\r\n`, `$5\r\n`.
fn encode_length(out: &mut Vec<u8>, kind: u8, length: usize) {
    out.push(kind);
    out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends a bulk string.
fn encode_bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    encode_length(out, b'$', bytes.len());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// Appends a number as a bulk string, as Redis takes arguments.
fn encode_number(out: &mut Vec<u8>, number: u64) {
    encode_bulk(out, itoa::Buffer::new().format(number).as_bytes());
}

async fn write_commands(mut socket: OwnedWriteHalf, shared: Arc<Shared>) {
    let mut batch = Vec::with_capacity(16 * 1024);
    // The decisions taken, handed back (empty, allocated) for the next ones.
    let mut taken: Vec<Batch> = Vec::new();
    loop {
        shared.output.notified().await;
        {
            let mut state = shared.lock();
            if state.failed.is_some() {
                return;
            }
            // Swap buffers: calls go on appending to the (empty, allocated) other one.
            std::mem::swap(&mut state.output, &mut batch);
            std::mem::swap(&mut state.pending, &mut taken);
            // Under the lock: the reply slots are queued in the order the bytes go out.
            for decisions in taken.drain(..) {
                decisions.encode(&mut batch);
                state.waiting.push_back(Waiter::Decisions(decisions));
            }
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
            let waiter = shared.lock().waiting.pop_front();
            match waiter {
                // A call that gave up (its deadline passed) dropped its receiver.
                Some(waiter) => shared.answer(waiter, frame),
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
            if count < 0 {
                return Ok(Some((Frame::Other("null array"), used)));
            }
            // Capped: the count is the server's word, the memory ours.
            let mut integers =
                Vec::with_capacity(count.min(5 * MAX_DECISIONS_PER_CALL as i64) as usize);
            let mut all_integers = true;
            for _ in 0..count {
                let rest = &input[used..];
                if let Some((b':', element, took)) = next_line(rest) {
                    integers.push(integer(element)?);
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
                Frame::Integers(integers)
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
    let mut from = 0;
    loop {
        let end = from + rest[from..].iter().position(|&b| b == b'\r')?;
        match rest.get(end + 1) {
            Some(b'\n') => return Some((kind, &rest[..end], end + 3)),
            Some(_) => from = end + 1,
            None => return None,
        }
    }
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

/// A RESP integer: an optional `-` and up to 19 digits.
fn integer(digits: &[u8]) -> Result<i64, &'static str> {
    const MALFORMED: &str = "a malformed integer";
    let (negative, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 19 {
        return Err(MALFORMED);
    }
    let mut value: i64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return Err(MALFORMED);
        }
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(digit - b'0')))
            .ok_or(MALFORMED)?;
    }
    Ok(if negative { -value } else { value })
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

/// A reply of the wrong shape: the link is fine, the answer unusable.
pub(crate) fn unexpected(frame: &Frame) -> RedisError {
    RedisError::from((
        ErrorKind::UnexpectedReturnType,
        "unexpected reply",
        format!("{frame:?}"),
    ))
}

/// An error reply as redis-rs would report it, so that the link and the scripts tell the
/// kinds apart in one way whatever the connection.
fn server_error(text: &str) -> RedisError {
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
    RedisError::from((ErrorKind::Server(kind), description, text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::Demand;
    use crate::policy::{Limit, Policy};

    fn parsed(input: &[u8]) -> Option<(Frame, usize)> {
        parse(input).unwrap()
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode_length(&mut out, b'*', 3);
        encode_bulk(&mut out, b"GET");
        encode_bulk(&mut out, b"k");
        encode_number(&mut out, 18_446_744_073_709_551_615);
        assert_eq!(
            out,
            b"*3\r\n$3\r\nGET\r\n$1\r\nk\r\n$20\r\n18446744073709551615\r\n"
        );
    }

    /// A decision's key and the receiver of its reply.
    type Asked = (&'static str, oneshot::Receiver<RedisResult<Reply>>);

    /// A batch of one decision per key in `keys` (10 per second, fixed window), with the
    /// receivers of their replies.
    fn batch_of(keys: &[&'static str]) -> (Batch, Vec<Asked>) {
        let policy = Policy::new(
            "p",
            Limit::fixed_window(10, std::time::Duration::from_secs(1)),
            crate::policy::FailureMode::default(),
        )
        .unwrap();
        let mut batch = Batch::new(ScriptCall::new(&policy, Demand::Exact(1)));
        let mut replies = Vec::new();
        for &key in keys {
            let (slot, reply) = oneshot::channel();
            batch.add(key, slot);
            replies.push((key, reply));
        }
        (batch, replies)
    }

    #[test]
    fn a_batch_is_one_script_call_with_each_key_once_and_its_count() {
        let (batch, replies) = batch_of(&["a", "b", "a"]);
        let call = batch.call;
        assert_eq!(batch.decisions, 3);
        let mut out = Vec::new();
        batch.encode(&mut out);
        let sha = &call.script.sha;
        let expected = format!(
            "*11\r\n$7\r\nEVALSHA\r\n$40\r\n{sha}\r\n$1\r\n2\r\n$1\r\na\r\n$1\r\nb\r\n\
             $2\r\n10\r\n$4\r\n1000\r\n$1\r\n1\r\n$1\r\n0\r\n$1\r\n2\r\n$1\r\n1\r\n"
        );
        assert_eq!(String::from_utf8(out).unwrap(), expected);

        // Replies come key by key: a's two, then b's.
        batch.answer(Frame::Integers(vec![
            1, 9, 1, -1, 1, 1, 8, 2, -1, 1, 0, 0, 3, 4, 0,
        ]));
        let answers: Vec<_> = replies
            .into_iter()
            .map(|(key, mut reply)| (key, reply.try_recv().unwrap().unwrap()))
            .collect();
        assert_eq!(
            answers,
            [
                ("a", (1, 9, 1, -1, 1)),
                ("b", (0, 0, 3, 4, 0)),
                ("a", (1, 8, 2, -1, 1)),
            ]
        );
    }

    #[test]
    fn a_batch_answered_with_an_error_or_the_wrong_count_fails_every_decision() {
        for frame in [
            Frame::Error("ERR boom".into()),
            Frame::Integers(vec![1, 9, 1, -1, 1]),
            Frame::Status("OK".into()),
        ] {
            let (batch, replies) = batch_of(&["a", "b"]);
            batch.answer(frame.clone());
            for (_, mut reply) in replies {
                assert!(reply.try_recv().unwrap().is_err(), "{frame:?}");
            }
        }
    }

    #[test]
    fn integer_arrays_statuses_and_errors_parse_and_partial_input_waits() {
        let script = b"*5\r\n:1\r\n:99\r\n:600000\r\n:-1\r\n:1\r\n";
        assert_eq!(
            parsed(script),
            Some((Frame::Integers(vec![1, 99, 600_000, -1, 1]), script.len()))
        );
        for cut in 0..script.len() {
            assert_eq!(parsed(&script[..cut]), None, "cut at {cut}");
        }
        assert_eq!(parsed(b"*0\r\n"), Some((Frame::Integers(vec![]), 4)));
        assert_eq!(parsed(b"*-1\r\n"), Some((Frame::Other("null array"), 5)));
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
    fn integers_and_lines_parse_as_resp_writes_them() {
        for text in [
            "0",
            "-1",
            "42",
            "9223372036854775807",
            "-9223372036854775807",
        ] {
            assert_eq!(integer(text.as_bytes()), Ok(text.parse::<i64>().unwrap()));
        }
        for text in [
            "",
            "-",
            "1a",
            "+1",
            "9223372036854775808",
            "99999999999999999999",
        ] {
            assert!(integer(text.as_bytes()).is_err(), "{text:?}");
        }
        // A line ends at CRLF only.
        assert_eq!(next_line(b":12\r"), None);
        assert_eq!(next_line(b":12\rx\r\n"), Some((b':', &b"12\rx"[..], 7)));
        assert!(parse(b":12\rx\r\n").is_ok());
        assert!(parse(b"*1\r\n:12\rx\r\n").is_err());
        assert_eq!(next_line(b":12\r\n:3"), Some((b':', &b"12"[..], 5)));
    }

    #[test]
    fn error_replies_keep_their_kind() {
        let noscript = server_error("NOSCRIPT No matching script.");
        assert_eq!(
            noscript.kind(),
            ErrorKind::Server(ServerErrorKind::NoScript)
        );
        let readonly = server_error("READONLY You can't write against a read only replica.");
        assert_eq!(
            readonly.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly)
        );
        assert!(closed("gone").is_io_error());
    }
}
