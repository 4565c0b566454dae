//! The one client of the tests and the benches (the benches include this file with `#[path]`):
//! HTTP/1.1 with hyper over a real socket, and the NDJSON stream of a run split into lines and
//! decoded into the gateway's own [`Frame`].
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
pub use cligate::run::frame::{EndReason, Frame, Stream};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// One HTTP/1.1 connection; requests on it are sent one after the other (keep-alive).
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    task: JoinHandle<()>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).ok();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender, task })
    }

    /// Whether the server closed the connection (then open another).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Sends one request and answers the response head; its body streams in afterwards.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<Response<Incoming>, String> {
        self.sender.ready().await.map_err(|e| format!("connection: {e}"))?;
        self.sender
            .send_request(build(method, path, body, headers))
            .await
            .map_err(|e| format!("{method} {path}: {e}"))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn build(method: &str, path: &str, body: Option<Vec<u8>>, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "cligate.test");
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Full::new(Bytes::from(body.unwrap_or_default()))).unwrap()
}

/// A complete response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// Asserts the gateway's error shape and status.
    pub fn assert_error(&self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "body: {:?}",
            String::from_utf8_lossy(&self.body)
        );
        let body = self.json();
        assert_eq!(body["code"], status, "{body}");
        assert!(
            body["error"].is_string() && body["message"].is_string() && body["detail"].is_string(),
            "{body}"
        );
        body
    }
}

/// One request on a fresh connection, read to the end.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> Reply {
    try_request(addr, method, path, body, headers)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

pub async fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let mut conn = Conn::open(addr).await?;
    let (parts, body) = conn.send(method, path, body, headers).await?.into_parts();
    let body = body.collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// Splits NDJSON into lines, whatever pieces the bytes arrive in.
#[derive(Default)]
pub struct Lines {
    buf: BytesMut,
}

impl Lines {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole line, without its newline.
    pub fn next_line(&mut self) -> Option<Bytes> {
        let i = memchr::memchr(b'\n', &self.buf)?;
        let mut line = self.buf.split_to(i + 1);
        line.truncate(i);
        Some(line.freeze())
    }

    /// Calls `on` with each whole line of what has arrived and `data`, without its newline;
    /// whole lines inside `data` are not copied (the benches' hot path).
    pub fn feed<E>(&mut self, mut data: &[u8], mut on: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        if !self.buf.is_empty() {
            let Some(i) = memchr::memchr(b'\n', data) else {
                self.buf.extend_from_slice(data);
                return Ok(());
            };
            self.buf.extend_from_slice(&data[..i]);
            let line = self.buf.split();
            on(&line)?;
            data = &data[i + 1..];
        }
        while let Some(i) = memchr::memchr(b'\n', data) {
            on(&data[..i])?;
            data = &data[i + 1..];
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// Bytes after the last newline (a frame cut off when the stream ends here).
    pub fn rest(&self) -> &[u8] {
        &self.buf
    }

    pub fn take_rest(&mut self) -> Vec<u8> {
        self.buf.split().to_vec()
    }
}

/// One NDJSON line as the gateway's [`Frame`].
pub fn decode(line: &[u8]) -> Result<Frame, String> {
    serde_json::from_slice(line).map_err(|e| format!("frame is not a Frame ({e}): {:?}", String::from_utf8_lossy(line)))
}

/// A decoded line, for readers that must not allocate per frame (the benches).
pub enum Decoded<'a> {
    /// A `stdout`/`stderr` frame's data, unescaped into the caller's scratch buffer.
    Output(Stream, &'a [u8]),
    Frame(Frame),
}

/// As [`decode`], but a `stdout`/`stderr` line in the gateway's compact shape with only the
/// escapes it writes for ASCII is unescaped into `scratch` without building a [`Frame`];
/// anything else goes through [`decode`].
pub fn decode_output<'a>(line: &[u8], scratch: &'a mut Vec<u8>) -> Result<Decoded<'a>, String> {
    const OUT: &[u8] = br#"{"type":"stdout","data":""#;
    const ERR: &[u8] = br#"{"type":"stderr","data":""#;
    for (prefix, stream) in [(OUT, Stream::Stdout), (ERR, Stream::Stderr)] {
        if line.starts_with(prefix)
            && line.ends_with(b"\"}")
            && line.len() >= prefix.len() + 2
            && unescape(&line[prefix.len()..line.len() - 2], scratch)
        {
            return Ok(Decoded::Output(stream, scratch));
        }
    }
    decode(line).map(Decoded::Frame)
}

/// JSON string body (without quotes) → bytes, for the escapes the gateway produces for ASCII.
/// False when it meets something it does not handle (then serde decodes the line).
fn unescape(mut s: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    while let Some(i) = memchr::memchr2(b'\\', b'"', s) {
        // A bare quote inside is not the gateway's shape: serde decides (and refuses it).
        if s[i] == b'"' || i + 1 >= s.len() {
            return false;
        }
        out.extend_from_slice(&s[..i]);
        out.push(match s[i + 1] {
            b'n' => b'\n',
            b'"' => b'"',
            b'\\' => b'\\',
            b't' => b'\t',
            b'r' => b'\r',
            b'/' => b'/',
            _ => return false,
        });
        s = &s[i + 2..];
    }
    out.extend_from_slice(s);
    true
}

/// What tests ask of a [`Frame`]: its type name and its text.
pub trait FrameFields {
    /// The `type` on the wire.
    fn kind(&self) -> &'static str;
    /// The `data` of a `stdout`/`stderr` frame.
    fn data(&self) -> Option<&str>;
    /// The `reason` of an `exit` frame.
    fn reason(&self) -> Option<EndReason>;
}

impl FrameFields for Frame {
    fn kind(&self) -> &'static str {
        match self {
            Frame::Session { .. } => "session",
            Frame::Stdout { .. } => "stdout",
            Frame::Stderr { .. } => "stderr",
            Frame::Git(_) => "git",
            Frame::Exit { .. } => "exit",
        }
    }

    fn data(&self) -> Option<&str> {
        match self {
            Frame::Stdout { data } | Frame::Stderr { data } => Some(data),
            _ => None,
        }
    }

    fn reason(&self) -> Option<EndReason> {
        match self {
            Frame::Exit { reason, .. } => Some(*reason),
            _ => None,
        }
    }
}

/// An open streamed response (`POST /run`, `GET /runs/{id}/stream`), read frame by frame.
/// Dropping it closes the connection.
pub struct RunStream {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
    lines: Lines,
    conn: Conn,
}

impl RunStream {
    pub async fn open(addr: SocketAddr, body: Vec<u8>, headers: &[(&str, &str)]) -> RunStream {
        RunStream::request(addr, "POST", "/run", Some(body), headers).await
    }

    /// Any streamed answer, e.g. `GET /runs/{id}/stream?offset=N`.
    pub async fn request(
        addr: SocketAddr,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> RunStream {
        let mut conn = Conn::open(addr).await.unwrap_or_else(|e| panic!("{e}"));
        let response = conn
            .send(method, path, body, headers)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (parts, body) = response.into_parts();
        RunStream {
            status: parts.status,
            headers: parts.headers,
            body,
            lines: Lines::default(),
            conn,
        }
    }

    /// The next piece of the body exactly as received (`None` at its end).
    pub async fn next_bytes(&mut self) -> Option<Bytes> {
        self.try_next_bytes()
            .await
            .unwrap_or_else(|e| panic!("stream broke: {e}"))
    }

    /// The next piece of the body, `Ok(None)` at its end, `Err` when the connection broke.
    pub async fn try_next_bytes(&mut self) -> Result<Option<Bytes>, String> {
        if !self.lines.rest().is_empty() {
            return Ok(Some(Bytes::from(self.lines.take_rest())));
        }
        loop {
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        return Ok(Some(data));
                    }
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => return Ok(None),
            }
        }
    }

    /// The rest of the body, exactly as received.
    pub async fn raw_to_end(mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(piece) = self.next_bytes().await {
            out.extend_from_slice(&piece);
        }
        out
    }

    /// The rest of the body as text (for refused runs).
    pub async fn error_body(&mut self) -> String {
        let mut out = self.lines.take_rest();
        while let Some(Ok(frame)) = self.body.frame().await {
            if let Ok(data) = frame.into_data() {
                out.extend_from_slice(&data);
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The next NDJSON line as sent, or `None` at the end of the stream (which must not cut a
    /// line).
    pub async fn next_line(&mut self) -> Option<Bytes> {
        loop {
            if let Some(line) = self.lines.next_line() {
                return Some(line);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.lines.push(&data);
                    }
                }
                Some(Err(e)) => panic!("stream broke: {e}"),
                None => {
                    assert!(
                        self.lines.rest().is_empty(),
                        "stream ended inside a frame: {:?}",
                        String::from_utf8_lossy(self.lines.rest())
                    );
                    return None;
                }
            }
        }
    }

    /// The next frame, or `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<Frame> {
        let line = self.next_line().await?;
        Some(decode(&line).unwrap_or_else(|e| panic!("{e}")))
    }

    /// The next frame within `limit`.
    pub async fn next_within(&mut self, limit: Duration) -> Option<Frame> {
        tokio::time::timeout(limit, self.next()).await.expect("a frame in time")
    }

    /// Reads frames until one of type `kind` arrives, returning it.
    pub async fn until(&mut self, kind: &str) -> Frame {
        loop {
            let frame = self
                .next()
                .await
                .unwrap_or_else(|| panic!("stream ended before a {kind} frame"));
            if frame.kind() == kind {
                return frame;
            }
        }
    }

    /// Reads stdout frames until their text contains `needle`; returns all stdout text read.
    pub async fn stdout_until(&mut self, needle: &str) -> String {
        let mut text = String::new();
        while !text.contains(needle) {
            let frame = self
                .next()
                .await
                .unwrap_or_else(|| panic!("ended before {needle:?}; got {text:?}"));
            if let Frame::Stdout { data } = frame {
                text.push_str(&data);
            }
        }
        text
    }

    /// Reads stdout until `n` pids (`pid <n>` lines, as the fixtures print them) have arrived.
    pub async fn pids(&mut self, n: usize) -> Vec<u32> {
        let mut text = String::new();
        while pids_in(&text).len() < n {
            text.push_str(&self.stdout_until("\n").await);
        }
        pids_in(&text)
    }

    /// Every remaining frame.
    pub async fn collect(mut self) -> Frames {
        let mut frames = Vec::new();
        while let Some(f) = self.next().await {
            frames.push(f);
        }
        Frames(frames)
    }

    /// Every remaining line as sent, each a JSON value (for checks against a schema).
    pub async fn collect_json(mut self) -> Vec<Value> {
        let mut values = Vec::new();
        while let Some(line) = self.next_line().await {
            values.push(
                serde_json::from_slice(&line)
                    .unwrap_or_else(|e| panic!("frame is not JSON ({e}): {:?}", String::from_utf8_lossy(&line))),
            );
        }
        values
    }

    /// Closes the connection without reading further (the client goes away).
    pub fn disconnect(self) {}
}

/// The frames of a finished run.
#[derive(Debug)]
pub struct Frames(pub Vec<Frame>);

impl Frames {
    pub fn text(&self, kind: &str) -> String {
        self.0
            .iter()
            .filter(|f| f.kind() == kind)
            .filter_map(|f| f.data())
            .collect()
    }

    pub fn stdout(&self) -> String {
        self.text("stdout")
    }

    pub fn stderr(&self) -> String {
        self.text("stderr")
    }

    /// Checks the stream's shape (session first, exactly one exit last) and returns the exit.
    pub fn exit(&self) -> (i64, String) {
        let frames = &self.0;
        assert!(frames.len() >= 2, "{frames:?}");
        assert!(matches!(frames[0], Frame::Session { .. }), "{frames:?}");
        assert_eq!(frames.iter().filter(|f| f.kind() == "exit").count(), 1, "{frames:?}");
        match frames.last() {
            Some(Frame::Exit { code, reason }) => (i64::from(*code), reason.as_str().to_string()),
            _ => panic!("the last frame is not the exit: {frames:?}"),
        }
    }

    pub fn session(&self) -> String {
        match &self.0[0] {
            Frame::Session { id, .. } => id.clone(),
            other => panic!("the first frame is not the session: {other:?}"),
        }
    }
}

/// Pids announced by the `spawn-tree` fixture (`pid <n>` lines).
pub fn pids_in(text: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|l| l.strip_prefix("pid "))
        .map(|p| p.trim().parse().unwrap())
        .collect()
}

/// A statically linked busybox (Debian's busybox-static): it runs in a `FROM scratch` image. The
/// Docker-mode tests and the benches build their images from it.
pub fn static_busybox() -> Result<std::path::PathBuf, String> {
    let hint = "a static busybox is needed at /bin/busybox: `apt-get install busybox-static`";
    let path = ["/bin/busybox", "/usr/bin/busybox"]
        .map(std::path::PathBuf::from)
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| format!("no busybox found; {hint}"))?;
    let elf = std::fs::read(&path).map_err(|e| format!("reading {}: {e}; {hint}", path.display()))?;
    if has_interpreter(&elf) {
        return Err(format!("{} is dynamically linked; {hint}", path.display()));
    }
    Ok(path)
}

/// Whether an ELF64 little-endian file asks for a dynamic loader (has a PT_INTERP header).
pub fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |o: usize| elf.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()));
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return true; // Not what we expect: treat as unusable.
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return true;
    };
    const PT_INTERP: u32 = 3;
    (0..phnum).any(|i| u32_at(phoff + i * phentsize) == Some(PT_INTERP))
}
