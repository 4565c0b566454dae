//! Turns a pipe's raw bytes into output frames: one frame per line, over-long lines cut into
//! bounded pieces, partial lines released on demand, and UTF-8 decoded incrementally so that a
//! character is never split (invalid bytes become U+FFFD).

use bytes::BytesMut;

use super::frame::{Stream, encode_output_bytes};

/// Largest `data` of one frame, in bytes of the child's output. Longer lines are sent in pieces,
/// so a child printing one enormous line never makes the gateway hold it whole.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// Per-pipe framing state: only the unfinished line is kept between reads.
#[derive(Debug)]
pub struct LineFramer {
    stream: Stream,
    /// The current line, not yet ended by a newline; never longer than [`MAX_FRAME_BYTES`].
    pending: Vec<u8>,
}

impl LineFramer {
    pub fn new(stream: Stream) -> Self {
        LineFramer {
            stream,
            pending: Vec::new(),
        }
    }

    /// Whether an unfinished line is being held.
    pub fn has_partial(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Frames every complete line in `data` (plus what was held) into `out`; keeps the rest.
    pub fn push(&mut self, mut data: &[u8], out: &mut BytesMut) {
        // Room for the frames up front (28 bytes of framing per line, plus escapes), so that
        // `out` is not regrown and copied frame by frame.
        out.reserve(data.len() + data.len() / 8 + 64);
        if !self.pending.is_empty() {
            match memchr::memchr(b'\n', data) {
                Some(i) => {
                    let mut line = std::mem::take(&mut self.pending);
                    line.extend_from_slice(&data[..=i]);
                    self.emit(&line, out);
                    line.clear();
                    self.pending = line; // keep the allocation
                    data = &data[i + 1..];
                }
                None => {
                    self.pending.extend_from_slice(data);
                    self.cut_long_pending(out);
                    return;
                }
            }
        }
        while let Some(i) = memchr::memchr(b'\n', data) {
            self.emit(&data[..=i], out);
            data = &data[i + 1..];
        }
        if !data.is_empty() {
            self.pending.extend_from_slice(data);
            self.cut_long_pending(out);
        }
    }

    /// Releases the held partial line, except for a character whose bytes have not all arrived.
    pub fn flush_partial(&mut self, out: &mut BytesMut) {
        let keep = incomplete_tail(&self.pending);
        let cut = self.pending.len() - keep;
        if cut > 0 {
            let rest = self.pending.split_off(cut);
            let line = std::mem::replace(&mut self.pending, rest);
            self.emit(&line, out);
        }
    }

    /// Releases everything held: the pipe has closed, so an unfinished character is invalid.
    pub fn finish(&mut self, out: &mut BytesMut) {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line, out);
        }
    }

    fn cut_long_pending(&mut self, out: &mut BytesMut) {
        while self.pending.len() >= MAX_FRAME_BYTES {
            let cut = char_boundary(&self.pending, MAX_FRAME_BYTES);
            let rest = self.pending.split_off(cut);
            let piece = std::mem::replace(&mut self.pending, rest);
            self.encode(&piece, out);
        }
    }

    /// Encodes one line, in pieces of at most [`MAX_FRAME_BYTES`].
    fn emit(&self, mut line: &[u8], out: &mut BytesMut) {
        while line.len() > MAX_FRAME_BYTES {
            let cut = char_boundary(line, MAX_FRAME_BYTES);
            self.encode(&line[..cut], out);
            line = &line[cut..];
        }
        self.encode(line, out);
    }

    fn encode(&self, bytes: &[u8], out: &mut BytesMut) {
        encode_output_bytes(self.stream, bytes, out);
    }
}

/// The largest cut `<= limit` that does not fall inside a UTF-8 character (a cut before a
/// continuation byte moves back, at most three bytes).
fn char_boundary(bytes: &[u8], limit: usize) -> usize {
    let mut cut = limit.min(bytes.len());
    let floor = cut.saturating_sub(3);
    while cut > floor && cut < bytes.len() && is_continuation(bytes[cut]) {
        cut -= 1;
    }
    if cut == 0 { limit } else { cut }
}

fn is_continuation(b: u8) -> bool {
    b & 0b1100_0000 == 0b1000_0000
}

/// How many bytes at the end of `bytes` start a character that is not complete yet (0 to 3).
fn incomplete_tail(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=len.min(4) {
        let b = bytes[len - back];
        if is_continuation(b) {
            continue;
        }
        let width = match b {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => 1,
        };
        return if back < width { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::frame::Frame;

    fn frames(out: &BytesMut) -> Vec<String> {
        out[..]
            .split(|c| *c == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| match serde_json::from_slice(l).unwrap() {
                Frame::Stdout { data } => data,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn one_frame_per_line_and_partial_lines_are_held() {
        let mut f = LineFramer::new(Stream::Stdout);
        let mut out = BytesMut::new();
        f.push(b"a\nb\npar", &mut out);
        assert_eq!(frames(&out), ["a\n", "b\n"]);
        assert!(f.has_partial());
        f.push(b"tial\n", &mut out);
        assert_eq!(frames(&out), ["a\n", "b\n", "partial\n"]);
        assert!(!f.has_partial());
    }

    #[test]
    fn a_character_split_across_reads_comes_out_whole() {
        let mut f = LineFramer::new(Stream::Stdout);
        let mut out = BytesMut::new();
        f.push(b"caf\xc3", &mut out);
        f.flush_partial(&mut out);
        assert_eq!(frames(&out), ["caf"]);
        f.push(b"\xa9 \xe2\x82", &mut out);
        f.flush_partial(&mut out);
        f.push(b"\xac\n", &mut out);
        assert_eq!(frames(&out), ["caf", "é ", "€\n"]);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut f = LineFramer::new(Stream::Stdout);
        let mut out = BytesMut::new();
        f.push(b"a\xff\xc3\n", &mut out);
        f.push(b"\xe2\x82", &mut out);
        f.finish(&mut out);
        assert_eq!(frames(&out), ["a\u{fffd}\u{fffd}\n", "\u{fffd}"]);
    }

    #[test]
    fn long_lines_are_cut_into_bounded_pieces_on_character_boundaries() {
        let mut f = LineFramer::new(Stream::Stdout);
        let mut out = BytesMut::new();
        let line = "é".repeat(MAX_FRAME_BYTES); // two bytes each
        for chunk in line.as_bytes().chunks(1000) {
            f.push(chunk, &mut out);
        }
        f.push(b"\n", &mut out);
        let got = frames(&out);
        assert!(got.len() >= 2);
        assert!(got.iter().all(|p| p.len() <= MAX_FRAME_BYTES));
        assert_eq!(got.concat(), line + "\n");

        let mut out = BytesMut::new();
        let single = format!("{}\n", "x".repeat(3 * MAX_FRAME_BYTES + 5));
        f.push(single.as_bytes(), &mut out);
        let got = frames(&out);
        assert_eq!(got.len(), 4);
        assert_eq!(got.concat(), single);
    }

    #[test]
    fn incomplete_tail_recognises_every_width() {
        assert_eq!(incomplete_tail(b"ab"), 0);
        assert_eq!(incomplete_tail(b"a\xc3"), 1);
        assert_eq!(incomplete_tail("é".as_bytes()), 0);
        assert_eq!(incomplete_tail(b"\xe2\x82"), 2);
        assert_eq!(incomplete_tail(b"\xf0\x9f\x98"), 3);
        assert_eq!(incomplete_tail("😀".as_bytes()), 0);
        assert_eq!(incomplete_tail(b"\x80\x80\x80\x80"), 0);
    }
}
