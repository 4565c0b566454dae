//! The NDJSON wire format of a run: one JSON object per line, `{"type": …}` first.
//!
//! A run's stream is always:
//!
//! ```text
//! {"type":"session","id":"3f0c…"}
//! {"type":"stdout","data":"partial output...\n"}
//! {"type":"stderr","data":"log message...\n"}
//! {"type":"exit","code":0,"reason":"exited"}
//! ```
//!
//! The first frame names the session; the last frame is exactly one `exit`. `data` is UTF-8 text
//! (invalid bytes become U+FFFD). Clients ignore types and fields they do not know, so new ones may
//! be added; the shapes above may not change.

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};

/// One line of a run's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Frame {
    Session { id: String },
    Stdout { data: String },
    Stderr { data: String },
    Exit { code: i32, reason: EndReason },
}

/// Which pipe a piece of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Why a run ended; carried on the exit frame, in logs and in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The CLI exited by itself.
    Exited,
    /// `RUN_RESPONSE_TIMEOUT_SECONDS` passed.
    Timeout,
    /// `RUN_IDLE_TIMEOUT_SECONDS` passed without output.
    IdleTimeout,
    /// `RUN_OUTPUT_LIMIT_BYTES` was reached.
    OutputLimit,
    /// `POST /sessions/{id}/stop`.
    Stopped,
    /// The client went away.
    Disconnected,
    /// The gateway is shutting down.
    Shutdown,
    /// The CLI could not be started.
    SpawnFailed,
    /// The gateway itself failed while running it.
    Internal,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Exited => "exited",
            EndReason::Timeout => "timeout",
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::OutputLimit => "output_limit",
            EndReason::Stopped => "stopped",
            EndReason::Disconnected => "disconnected",
            EndReason::Shutdown => "shutdown",
            EndReason::SpawnFailed => "spawn_failed",
            EndReason::Internal => "internal",
        }
    }

    pub const ALL: [EndReason; 9] = [
        EndReason::Exited,
        EndReason::Timeout,
        EndReason::IdleTimeout,
        EndReason::OutputLimit,
        EndReason::Stopped,
        EndReason::Disconnected,
        EndReason::Shutdown,
        EndReason::SpawnFailed,
        EndReason::Internal,
    ];
}

impl Frame {
    /// Appends this frame and its newline to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        // Writing into a BytesMut cannot fail and these types always serialise.
        serde_json::to_writer(out.writer(), self).expect("frame serialises");
        out.put_u8(b'\n');
    }
}

/// Appends a `stdout`/`stderr` frame for `data` without building a [`Frame`] (the hot path: no
/// `String` is allocated per frame).
pub fn encode_output(stream: Stream, data: &str, out: &mut BytesMut) {
    #[derive(Serialize)]
    struct Output<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        data: &'a str,
    }
    out.reserve(data.len() + 32);
    serde_json::to_writer(
        out.writer(),
        &Output {
            kind: stream.as_str(),
            data,
        },
    )
    .expect("frame serialises");
    out.put_u8(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(f: &Frame) -> String {
        let mut b = BytesMut::new();
        f.encode(&mut b);
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn wire_shapes_are_pinned() {
        assert_eq!(
            line(&Frame::Session { id: "s1".into() }),
            "{\"type\":\"session\",\"id\":\"s1\"}\n"
        );
        assert_eq!(
            line(&Frame::Stdout { data: "a\"\n".into() }),
            "{\"type\":\"stdout\",\"data\":\"a\\\"\\n\"}\n"
        );
        assert_eq!(
            line(&Frame::Exit {
                code: 143,
                reason: EndReason::Stopped
            }),
            "{\"type\":\"exit\",\"code\":143,\"reason\":\"stopped\"}\n"
        );
    }

    #[test]
    fn output_encoding_decodes_as_frames() {
        let mut b = BytesMut::new();
        encode_output(Stream::Stderr, "é\u{fffd}\t", &mut b);
        encode_output(Stream::Stdout, "x", &mut b);
        let frames: Vec<Frame> = b[..]
            .split(|c| *c == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(
            frames,
            [
                Frame::Stderr {
                    data: "é\u{fffd}\t".into()
                },
                Frame::Stdout { data: "x".into() }
            ]
        );
    }

    #[test]
    fn reasons_are_snake_case_on_the_wire() {
        for r in EndReason::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }
}
