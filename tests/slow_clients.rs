//! Slow, numerous and oversized clients, over real sockets: a body that never arrives gets 408
//! and its connection back; a head that never arrives gets its connection closed; slow clients
//! cannot take the file descriptors health checks and runs need (the real binary, under a
//! lowered `RLIMIT_NOFILE`); a burst of connections fits in the listen backlog; connections over
//! `MAX_CONNECTIONS` wait instead of being refused; and a client that sends a too-large body
//! before reading (Python's urllib) reads the 413 instead of a broken pipe.

mod common;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::{Binary, Gateway, Launch, RunStream};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

/// The head of a request that declares a 1000-byte body, followed by its first byte only.
const SLOW_BODY: &[u8] =
    b"POST /run HTTP/1.1\r\nhost: cligate.test\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{";
const HEALTH_CLOSE: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: cligate.test\r\nconnection: close\r\n\r\n";
const HEALTH_KEEP: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: cligate.test\r\n\r\n";

/// A response read off a raw socket.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Raw {
    /// Parses a complete response (head and whatever body follows it).
    fn parse(bytes: &[u8]) -> Raw {
        let end = find(bytes, b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no complete head in {:?}", String::from_utf8_lossy(bytes)));
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        Raw {
            status,
            head,
            body: bytes[end + 4..].to_vec(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// Asserts the gateway's error shape, its status and kind, and that the connection is not
    /// kept for another request.
    fn assert_error(&self, status: u16, kind: &str) -> Value {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("content-type"), Some("application/json"), "{self:?}");
        assert_eq!(self.header("connection"), Some("close"), "{self:?}");
        let body: Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)));
        assert_eq!(body["code"], status, "{body}");
        assert_eq!(body["error"], kind, "{body}");
        assert!(body["message"].is_string() && body["detail"].is_string(), "{body}");
        body
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads until the peer closes (a reset counts as closed), within `limit`. Panics when the
/// connection is still open after `limit`.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    if tokio::time::timeout(limit, read).await.is_err() {
        panic!(
            "the connection is still open after {limit:?}; read {:?}",
            String::from_utf8_lossy(&out)
        );
    }
    out
}

/// Reads one response with a Content-Length body, leaving the connection open.
async fn read_one(stream: &mut TcpStream, limit: Duration) -> Raw {
    let read = async {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = find(&out, b"\r\n\r\n") {
                let raw = Raw::parse(&out);
                let length: usize = raw.header("content-length").map_or(0, |v| v.parse().unwrap());
                if out.len() >= end + 4 + length {
                    return raw;
                }
            }
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(limit, read)
        .await
        .unwrap_or_else(|_| panic!("no response within {limit:?}"))
}

/// The real binary with `vars` (over 1 s grace periods), under `ulimit -n nofile` when given.
async fn binary(vars: &[(&str, &str)], nofile: Option<u32>) -> Binary {
    let mut all = vec![("KILL_GRACE_SECONDS", "1"), ("SHUTDOWN_GRACE_SECONDS", "1")];
    all.extend_from_slice(vars);
    Binary::launch(Launch {
        vars: &all,
        nofile,
        ..Launch::default()
    })
    .await
}

/// One `GET /healthz` on a fresh connection that asks to be closed; the status.
async fn health(addr: SocketAddr) -> u16 {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(HEALTH_CLOSE).await.unwrap();
    Raw::parse(&read_until_closed(&mut stream, Duration::from_secs(30)).await).status
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closed() {
    let gw = Gateway::start(&[("REQUEST_READ_TIMEOUT_SECONDS", "1")]).await;
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(SLOW_BODY).await.unwrap();
    let started = Instant::now();
    let reply = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    let waited = started.elapsed();
    let reply = Raw::parse(&reply);
    let body = reply.assert_error(408, "request_timeout");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("REQUEST_READ_TIMEOUT_SECONDS"),
        "{body}"
    );
    assert!(waited >= Duration::from_millis(900), "answered after {waited:?}");
    // The gateway keeps serving, and a body that arrives in time is read as before.
    assert_eq!(health(gw.addr).await, 200);
    let frames = gw.run_to_end(json!({"cli": "echo-stdin", "stdin": "in time\n"})).await;
    assert_eq!(frames.exit(), (0, "exited".into()));
    assert_eq!(frames.stdout(), "in time\n");
}

#[tokio::test]
async fn a_head_that_does_not_arrive_in_time_gets_the_connection_closed() {
    // hyper has no hook to answer a late head: the connection is closed without a response.
    let gw = Gateway::start(&[("REQUEST_READ_TIMEOUT_SECONDS", "1")]).await;
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: cli").await.unwrap();
    let started = Instant::now();
    let reply = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(reply.is_empty(), "{:?}", String::from_utf8_lossy(&reply));
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(health(gw.addr).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_do_not_exhaust_file_descriptors() {
    // 256 descriptors; MAX_CONCURRENT_RUNS=4 keeps 64 + 4×4 of them for the process and its runs,
    // so the gateway serves at most 176 connections at once and the rest wait in the backlog.
    let gw = binary(
        &[("REQUEST_READ_TIMEOUT_SECONDS", "2"), ("MAX_CONCURRENT_RUNS", "4")],
        Some(256),
    )
    .await;
    let addr = gw.addr;
    // 300 clients that declare a 1000-byte body and send one byte of it.
    let mut connecting = Vec::new();
    for _ in 0..300 {
        connecting.push(tokio::spawn(async move {
            let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
                .await
                .ok()?
                .ok()?;
            stream.write_all(SLOW_BODY).await.ok()?;
            Some(stream)
        }));
    }
    let mut slow = Vec::new();
    for task in connecting {
        slow.extend(task.await.unwrap());
    }
    let connected = slow.len();

    // While they hold their connections, health answers: after at most one round of read
    // timeouts has freed connection slots.
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(12), health(addr))
        .await
        .unwrap_or_else(|_| panic!("no health answer in 12 s; log:\n{}", gw.log()));
    let health_after = started.elapsed();
    assert_eq!(status, 200);
    // And a run starts and exits 0: its pipes are not "Too many open files".
    let started = Instant::now();
    let run = tokio::time::timeout(Duration::from_secs(12), async {
        let body = json!({"cli": "echo-stdin", "stdin": "still serving\n"});
        let stream = RunStream::open(addr, body.to_string().into_bytes(), &[]).await;
        assert_eq!(stream.status, 200);
        stream.collect().await
    })
    .await
    .unwrap_or_else(|_| panic!("the run did not finish in 12 s; log:\n{}", gw.log()));
    let run_after = started.elapsed();
    assert_eq!(run.exit(), (0, "exited".into()), "{run:?}");
    assert_eq!(run.stdout(), "still serving\n");
    assert_eq!(connected, 300, "only {connected} of 300 slow clients connected");

    // Every slow client is answered 408 (or closed) in bounded time.
    let mut timed_out = 0;
    let mut closed = 0;
    for stream in &mut slow {
        let reply = read_until_closed(stream, Duration::from_secs(20)).await;
        if reply.is_empty() {
            closed += 1;
        } else {
            Raw::parse(&reply).assert_error(408, "request_timeout");
            timed_out += 1;
        }
    }
    eprintln!(
        "300 slow clients: health after {health_after:?}, run after {run_after:?}; {timed_out} got 408, {closed} were closed"
    );
    let log = gw.log();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(!log.contains("accept failed"), "{log}");
    assert!(log.contains("\"fd_soft\":256"), "{log}");
    let lowered = log
        .lines()
        .find(|l| l.contains("MAX_CONNECTIONS lowered"))
        .unwrap_or_else(|| panic!("the cap was not lowered:\n{log}"));
    assert!(lowered.contains("\"effective\":176"), "{lowered}");
}

/// Retransmitted segments of a connection (`TCP_INFO`): on loopback, only a listen queue that
/// overflowed drops a SYN or handshake ACK and makes the client send it again.
fn retransmits(stream: &TcpStream) -> u32 {
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info.tcpi_total_retrans
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_2000_connections_is_served_without_loss() {
    const BURST: usize = 2000;
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .map(|s| s.trim().parse().unwrap())
        .unwrap_or(4096);
    assert!(
        somaxconn as usize >= BURST,
        "net.core.somaxconn is {somaxconn}: the kernel, not the gateway, would limit the backlog"
    );
    let gw = binary(&[], None).await;
    let addr = gw.addr;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..BURST {
        tasks.push(tokio::spawn(async move {
            let connect_started = Instant::now();
            let mut stream = match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(format!("connect: {:?}", e.kind())),
                Err(_) => return Err("connect: timed out".to_string()),
            };
            let connect_time = connect_started.elapsed();
            stream
                .write_all(HEALTH_CLOSE)
                .await
                .map_err(|e| format!("write: {:?}", e.kind()))?;
            let mut reply = Vec::new();
            match tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("read: {:?}", e.kind())),
                Err(_) => return Err("read: timed out".to_string()),
            }
            if !reply.starts_with(b"HTTP/1.1 200 ") {
                return Err(format!("reply: {:?}", String::from_utf8_lossy(&reply)));
            }
            Ok((connect_time, retransmits(&stream)))
        }));
    }
    let mut failures = std::collections::BTreeMap::<String, usize>::new();
    let (mut served, mut retransmitted, mut slowest) = (0, 0, Duration::ZERO);
    for task in tasks {
        match task.await.unwrap() {
            Ok((connect_time, retrans)) => {
                served += 1;
                retransmitted += usize::from(retrans > 0);
                slowest = slowest.max(connect_time);
            }
            Err(e) => *failures.entry(e).or_default() += 1,
        }
    }
    let took = started.elapsed();
    eprintln!(
        "burst of {BURST}: {served} served in {took:?}, {retransmitted} needed a retransmit, slowest connect {slowest:?}, failures {failures:?}"
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(served, BURST);
    assert_eq!(
        retransmitted, 0,
        "the listen queue overflowed (slowest connect {slowest:?})"
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
}

#[tokio::test]
async fn connections_over_max_connections_wait_for_a_free_slot() {
    let gw = Gateway::start(&[("MAX_CONNECTIONS", "4")]).await;
    // Four keep-alive connections, each served once and then left open.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        stream.write_all(HEALTH_KEEP).await.unwrap();
        assert_eq!(read_one(&mut stream, Duration::from_secs(5)).await.status, 200);
        held.push(stream);
    }
    // A fifth connects (the backlog takes it) but is not served while the four are open...
    let mut fifth = TcpStream::connect(gw.addr)
        .await
        .expect("a fifth connection is not refused");
    fifth.write_all(HEALTH_KEEP).await.unwrap();
    let mut byte = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), fifth.peek(&mut byte))
            .await
            .is_err(),
        "the fifth connection was served while four were open"
    );
    // ...and is once one of them closes.
    drop(held.pop());
    let started = Instant::now();
    assert_eq!(read_one(&mut fifth, Duration::from_secs(5)).await.status, 200);
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    // The three still open keep being served.
    for stream in &mut held {
        stream.write_all(HEALTH_KEEP).await.unwrap();
        assert_eq!(read_one(stream, Duration::from_secs(5)).await.status, 200);
    }
}

const BIG: usize = 50_000_000;

#[tokio::test]
async fn python_urllib_sending_50_mb_reads_the_413() {
    let gw = Gateway::start(&[("MAX_REQUEST_BYTES", "1048576")]).await;
    let script = r#"
import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1], data=b"x" * 50_000_000, method="POST",
                             headers={"Content-Type": "application/json"})
try:
    urllib.request.urlopen(req, timeout=30)
    print("no error")
except urllib.error.HTTPError as e:
    print(e.code)
    print(e.read().decode())
except Exception as e:
    print("failed:", type(e).__name__, e)
"#;
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(format!("http://{}/run", gw.addr))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("python finishes within 60 s")
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("413"), "stdout {stdout:?}, stderr {stderr:?}");
    let body: Value = serde_json::from_str(lines.next().unwrap_or("")).unwrap();
    assert_eq!(
        (body["error"].as_str(), body["code"].as_u64()),
        (Some("payload_too_large"), Some(413))
    );
    assert_eq!(health(gw.addr).await, 200);
}

#[tokio::test]
async fn a_client_that_writes_50_mb_before_reading_reads_the_413() {
    let gw = Gateway::start(&[("MAX_REQUEST_BYTES", "1048576")]).await;
    let chunk = vec![b'x'; 1 << 20];

    // With a Content-Length.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /run HTTP/1.1\r\nhost: cligate.test\r\ncontent-type: application/json\r\ncontent-length: {BIG}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut left = BIG;
    while left > 0 {
        let n = left.min(chunk.len());
        stream
            .write_all(&chunk[..n])
            .await
            .unwrap_or_else(|e| panic!("writing the body broke after {} bytes: {e}", BIG - left));
        left -= n;
    }
    let reply = Raw::parse(&read_until_closed(&mut stream, Duration::from_secs(20)).await);
    reply.assert_error(413, "payload_too_large");

    // Chunked, so the gateway finds out only after 1 MiB.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"POST /run HTTP/1.1\r\nhost: cligate.test\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for i in 0..BIG / chunk.len() {
        let mut piece = format!("{:x}\r\n", chunk.len()).into_bytes();
        piece.extend_from_slice(&chunk);
        piece.extend_from_slice(b"\r\n");
        stream
            .write_all(&piece)
            .await
            .unwrap_or_else(|e| panic!("writing the chunked body broke at chunk {i}: {e}"));
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let reply = Raw::parse(&read_until_closed(&mut stream, Duration::from_secs(20)).await);
    reply.assert_error(413, "payload_too_large");

    // A client that waits for 100 Continue is refused at once, and need not send the body.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let head =
        format!("POST /run HTTP/1.1\r\nhost: cligate.test\r\ncontent-length: {BIG}\r\nexpect: 100-continue\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let reply = Raw::parse(&read_until_closed(&mut stream, Duration::from_secs(5)).await);
    reply.assert_error(413, "payload_too_large");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(health(gw.addr).await, 200);
}
