//! The NDJSON wire format of a run: one JSON object per line, `{"type": …}` first.
//!
//! A run's stream is always:
//!
//! ```text
//! {"type":"session","id":"3f0c…","run_id":"9a1b…"}
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
    /// The first frame: the client's session id and the gateway's run id (for `/runs/{id}`).
    Session {
        id: String,
        run_id: String,
    },
    Stdout {
        data: String,
    },
    Stderr {
        data: String,
    },
    /// A run on a branch (`workspace`): how the branch ended up, just before `exit`.
    Git(crate::workspace::GitReport),
    Exit {
        code: i32,
        reason: EndReason,
    },
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
    /// The run's branch could not be set up (fetch failed, unpushed commits could not be
    /// pushed, the branch diverged): the CLI was not started.
    Workspace,
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
            EndReason::Workspace => "workspace",
        }
    }

    pub const ALL: [EndReason; 10] = [
        EndReason::Exited,
        EndReason::Timeout,
        EndReason::IdleTimeout,
        EndReason::OutputLimit,
        EndReason::Stopped,
        EndReason::Disconnected,
        EndReason::Shutdown,
        EndReason::SpawnFailed,
        EndReason::Internal,
        EndReason::Workspace,
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
/// `String` is allocated per frame). The bytes are exactly what serde_json writes for
/// `{"type": …, "data": …}`; the escaping looks at many bytes at once (`escape_json`).
pub fn encode_output(stream: Stream, data: &str, out: &mut BytesMut) {
    put_output(stream, data.as_bytes(), out);
}

/// Appends the frame of a piece of a child's output, which may not be UTF-8: invalid bytes become
/// U+FFFD. ASCII, by far the most common output, is escaped in one pass without a separate UTF-8
/// check (the escaping notes whether it saw a byte above 0x7f); other text is checked once it is
/// escaped, and re-encoded lossily in the rare case that it is not UTF-8.
pub fn encode_output_bytes(stream: Stream, data: &[u8], out: &mut BytesMut) {
    let start = out.len();
    if put_output(stream, data, out) || std::str::from_utf8(data).is_ok() {
        return;
    }
    out.truncate(start);
    put_output(stream, String::from_utf8_lossy(data).as_bytes(), out);
}

/// Writes the frame; returns whether `data` was all ASCII.
fn put_output(stream: Stream, data: &[u8], out: &mut BytesMut) -> bool {
    let prefix: &[u8] = match stream {
        Stream::Stdout => br#"{"type":"stdout","data":""#,
        Stream::Stderr => br#"{"type":"stderr","data":""#,
    };
    out.reserve(prefix.len() + data.len() + 3);
    out.put_slice(prefix);
    let ascii = escape_json(data, out);
    out.put_slice(b"\"}\n");
    ascii
}

/// Appends `bytes` as the inside of a JSON string, escaped as serde_json does: quote and
/// backslash get a backslash, `\b \t \n \f \r` their short forms, other control characters
/// `\u00XX`; everything else is copied as is (callers pass UTF-8, or check it afterwards). On
/// x86_64 sixteen bytes are looked at and copied at once (SSE2, which every x86_64 has);
/// elsewhere eight, as a word. Returns whether every byte was ASCII.
fn escape_json(bytes: &[u8], out: &mut BytesMut) -> bool {
    #[cfg(target_arch = "x86_64")]
    return escape_json_sse2(bytes, out);
    #[cfg(not(target_arch = "x86_64"))]
    return escape_json_words(bytes, out);
}

/// Escapes with SSE2, copying ahead: each 16-byte block is stored whole before it is looked at
/// and only its clean prefix is kept, so a clean run costs one load and one store per block and
/// no call. Output with many escapes (JSON printed by a CLI, say) has short clean runs, where a
/// copy call per run cost more than the scan (measured on 1 KiB lines with an escape every 45
/// bytes: 0.38 s/GiB eight bytes at a time with a copy per run, 0.16 s/GiB this way).
/// Returns whether every byte was ASCII (the OR of the blocks' high bits, one more instruction
/// per block), which lets the caller skip a separate UTF-8 check of ASCII text.
#[cfg(target_arch = "x86_64")]
fn escape_json_sse2(bytes: &[u8], out: &mut BytesMut) -> bool {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        _mm_setzero_si128, _mm_storeu_si128,
    };
    const BLOCK: usize = 16;
    let mut i = 0;
    // SAFETY: SSE2 is part of x86_64.
    let mut high = unsafe { _mm_setzero_si128() };
    let mut tail_ascii = true;
    while i < bytes.len() {
        // Room for the rest as is, one block stored ahead and one escape.
        out.reserve(bytes.len() - i + BLOCK + 6);
        let spare = out.spare_capacity_mut();
        let mut w = 0; // bytes of `spare` written and kept
        while i + BLOCK <= bytes.len() {
            // SAFETY: SSE2 is part of x86_64. The load reads bytes[i..i + 16] and the store
            // writes spare[w..w + 16]: both in bounds (`w` never passes `i`'s progress and the
            // reservation above leaves a block more than the rest of `bytes`).
            let hits = unsafe {
                let v = _mm_loadu_si128(bytes.as_ptr().add(i).cast::<__m128i>());
                _mm_storeu_si128(spare.as_mut_ptr().add(w).cast::<__m128i>(), v);
                high = _mm_or_si128(high, v);
                // v <= 0x1f (unsigned), '"' or '\\'.
                let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
                let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
                let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
                _mm_movemask_epi8(_mm_or_si128(control, _mm_or_si128(quote, backslash))) as u32
            };
            if hits == 0 {
                i += BLOCK;
                w += BLOCK;
                continue;
            }
            let clean = hits.trailing_zeros() as usize;
            i += clean;
            w += clean;
            break;
        }
        if i + BLOCK > bytes.len() {
            // Less than a block left: one byte at a time.
            while i < bytes.len() && !needs_escape(bytes[i]) {
                tail_ascii &= bytes[i].is_ascii();
                spare[w].write(bytes[i]);
                i += 1;
                w += 1;
            }
        }
        if i < bytes.len() {
            // `bytes[i]` needs an escape, written in place too (the reservation has room).
            let mut esc = [0u8; 6];
            let n = write_escape(bytes[i], &mut esc);
            for (to, b) in spare[w..w + n].iter_mut().zip(esc) {
                to.write(b);
            }
            w += n;
            i += 1;
        }
        // SAFETY: the first `w` bytes of the spare capacity were written above.
        unsafe { out.set_len(out.len() + w) };
    }
    // SAFETY: SSE2 is part of x86_64.
    tail_ascii && unsafe { _mm_movemask_epi8(high) } == 0
}

/// Escapes eight bytes at a time (a word), copying each clean run with one call. Returns whether
/// every byte was ASCII.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn escape_json_words(bytes: &[u8], out: &mut BytesMut) -> bool {
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes.get(i..i + 8) {
            Some(word) => {
                let hits = escape_mask(u64::from_le_bytes(word.try_into().expect("eight bytes")));
                if hits == 0 {
                    i += 8;
                    continue;
                }
                i += hits.trailing_zeros() as usize / 8;
            }
            None if needs_escape(bytes[i]) => {}
            None => {
                i += 1;
                continue;
            }
        }
        out.put_slice(&bytes[start..i]);
        let mut esc = [0u8; 6];
        let n = write_escape(bytes[i], &mut esc);
        out.put_slice(&esc[..n]);
        i += 1;
        start = i;
    }
    out.put_slice(&bytes[start..]);
    bytes.is_ascii()
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Writes the escape of `b` at the start of `to`; returns its length.
fn write_escape(b: u8, to: &mut [u8]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let short = match b {
        b'"' => b'"',
        b'\\' => b'\\',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        0x08 => b'b',
        0x0c => b'f',
        _ => {
            to[..6].copy_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]]);
            return 6;
        }
    };
    to[..2].copy_from_slice(&[b'\\', short]);
    2
}

/// Marks (high bit of the byte) the bytes of a little-endian word that are a quote, a backslash
/// or below 0x20. Bytes above a marked one may be marked wrongly; the lowest mark is always right.
fn escape_mask(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |v: u64, n: u64| v.wrapping_sub(ONES * n) & !v & HIGH;
    below(w, 0x20) | below(w ^ (ONES * b'"' as u64), 1) | below(w ^ (ONES * b'\\' as u64), 1)
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
            line(&Frame::Session {
                id: "s1".into(),
                run_id: "r1".into()
            }),
            "{\"type\":\"session\",\"id\":\"s1\",\"run_id\":\"r1\"}\n"
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
    fn output_encoding_matches_serde_json_byte_for_byte() {
        #[derive(Serialize)]
        struct Output<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            data: &'a str,
        }
        let mut samples: Vec<String> = (0u32..0x80).map(|c| char::from_u32(c).unwrap().to_string()).collect();
        samples.push(String::new());
        samples.push((0u32..0x80).filter_map(char::from_u32).collect());
        samples.push("plain text longer than one word, with \"quotes\" and \\ and \n\t\r\u{1} inside".into());
        samples.push("é€😀\u{7f}\u{fffd} and some ASCII after the multibyte ones\u{1f}".into());
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..200 {
            let text: String = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    match seed % 10 {
                        0 => char::from_u32((seed >> 8) as u32 % 0x20).unwrap(),
                        1 => '"',
                        2 => '\\',
                        3 => 'é',
                        _ => char::from_u32(0x20 + (seed >> 8) as u32 % 0x5f).unwrap(),
                    }
                })
                .collect();
            samples.push(text);
        }
        for data in &samples {
            for stream in [Stream::Stdout, Stream::Stderr] {
                let mut got = BytesMut::new();
                encode_output(stream, data, &mut got);
                let mut want = serde_json::to_vec(&Output {
                    kind: stream.as_str(),
                    data,
                })
                .unwrap();
                want.push(b'\n');
                assert_eq!(&got[..], &want[..], "{data:?}");
            }
            // The portable way too (the one other architectures use).
            let mut words = BytesMut::new();
            escape_json_words(data.as_bytes(), &mut words);
            let want = serde_json::to_string(data).unwrap();
            assert_eq!(&words[..], &want.as_bytes()[1..want.len() - 1], "{data:?}");
        }
    }

    #[test]
    fn raw_output_is_encoded_as_its_lossy_text() {
        // Bytes of every kind at every position of a block and of the tail: ASCII, escapes,
        // valid multibyte characters, and bytes that are not UTF-8.
        let pieces: [&[u8]; 7] = [
            b"a",
            b"\"",
            b"\x01",
            "é".as_bytes(),
            "😀".as_bytes(),
            b"\xff",
            b"\xe2\x82",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..120 {
            for _ in 0..8 {
                let mut data = Vec::new();
                while data.len() < len {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    // Mostly ASCII, so that whole clean blocks occur.
                    let k = if seed.is_multiple_of(4) {
                        (seed >> 8) as usize % pieces.len()
                    } else {
                        0
                    };
                    data.extend_from_slice(pieces[k]);
                }
                let mut got = BytesMut::from(&b"earlier frames\n"[..]);
                encode_output_bytes(Stream::Stdout, &data, &mut got);
                let mut want = BytesMut::from(&b"earlier frames\n"[..]);
                encode_output(Stream::Stdout, &String::from_utf8_lossy(&data), &mut want);
                assert_eq!(got, want, "{data:?}");
                let mut escaped = BytesMut::new();
                assert_eq!(escape_json(&data, &mut escaped), data.is_ascii(), "{data:?}");
                assert_eq!(escape_json_words(&data, &mut BytesMut::new()), data.is_ascii());
            }
        }
    }

    #[test]
    fn reasons_are_snake_case_on_the_wire() {
        for r in EndReason::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }
}
