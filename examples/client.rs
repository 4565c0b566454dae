//! A small streaming client: sends one run to a cligate gateway, prints the CLI's stdout and
//! stderr as the frames arrive, and exits with the CLI's exit code.
//!
//! ```sh
//! echo "Say hello" | cargo run --example client -- http://127.0.0.1:8000 codex exec --skip-git-repo-check
//! ```
//! Set `CLIGATE_TOKEN` when the gateway wants a bearer token.

use std::io::{Read, Write};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<()> {
    let mut argv = std::env::args().skip(1);
    let url: hyper::Uri = argv
        .next()
        .context("usage: client URL CLI [ARGS...] < prompt")?
        .parse()
        .context("URL like http://127.0.0.1:8000")?;
    let cli = argv.next().context("usage: client URL CLI [ARGS...] < prompt")?;
    let args: Vec<String> = argv.collect();
    let mut prompt = String::new();
    std::io::stdin()
        .read_to_string(&mut prompt)
        .context("reading the prompt from stdin")?;

    let authority = url.authority().context("URL needs a host and port")?.clone();
    let stream = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .context("connecting")?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);

    let body = json!({ "cli": cli, "args": args, "stdin": prompt });
    let mut request = Request::post("/run")
        .header("host", authority.as_str())
        .header("content-type", "application/json");
    if let Ok(token) = std::env::var("CLIGATE_TOKEN") {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = sender
        .send_request(request.body(Full::new(Bytes::from(body.to_string())))?)
        .await?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let text = body.collect().await?.to_bytes();
        bail!("gateway answered {status}: {}", String::from_utf8_lossy(&text));
    }

    // Frames may arrive split across or packed into chunks: cut on newlines.
    let mut pending = Vec::new();
    let mut code = 1;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let frame: Value = serde_json::from_slice(&line).context("a frame that is not JSON")?;
            let text = frame["data"].as_str().unwrap_or_default();
            match frame["type"].as_str() {
                Some("session") => eprintln!("[session {}]", frame["id"].as_str().unwrap_or("?")),
                Some("stdout") => {
                    print!("{text}");
                    std::io::stdout().flush()?;
                }
                Some("stderr") => eprint!("{text}"),
                Some("exit") => {
                    code = frame["code"].as_i64().unwrap_or(1) as i32;
                    eprintln!("\n[exit {code}, {}]", frame["reason"].as_str().unwrap_or("exited"));
                }
                _ => {} // newer frame types: ignored, as every client should
            }
        }
    }
    std::process::exit(code);
}
