//! Splitting a byte stream into lines with bounded memory, and decoding them.

/// How a completed line should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LineKind {
    Whole,
    /// Longer than the limit: the bytes are the first `max` of the line.
    Truncated,
    /// The tail of a line whose start we never saw (we started mid-line).
    Discarded,
}

/// Assembles lines from chunks. Holds at most `max` bytes of one line: the
/// rest of an over-long line is skipped up to its newline, so a 10 MB line
/// costs `max` bytes of memory, not 10 MB.
#[derive(Debug)]
pub(crate) struct LineAssembler {
    max: usize,
    buf: Vec<u8>,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Filling,
    Overflowing,
    Discarding,
}

impl LineAssembler {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            buf: Vec::new(),
            state: State::Filling,
        }
    }

    /// Drops the held partial line, e.g. after the file was truncated.
    pub(crate) fn reset(&mut self) {
        self.buf = Vec::new();
        self.state = State::Filling;
    }

    /// Ignores everything up to the next newline (we are starting mid-line).
    pub(crate) fn discard_until_newline(&mut self) {
        self.buf = Vec::new();
        self.state = State::Discarding;
    }

    /// Feeds `chunk`; `on_line(bytes, kind, end)` is called for every line
    /// completed by it, `end` being the index in `chunk` just past its `\n`.
    pub(crate) fn feed(&mut self, chunk: &[u8], mut on_line: impl FnMut(Vec<u8>, LineKind, usize)) {
        let mut start = 0;
        while start < chunk.len() {
            let rest = &chunk[start..];
            match memchr::memchr(b'\n', rest) {
                // A whole line inside the chunk, nothing held: one
                // allocation of its exact size.
                Some(i) if self.state == State::Filling && self.buf.is_empty() && i <= self.max => {
                    on_line(rest[..i].to_vec(), LineKind::Whole, start + i + 1);
                    start += i + 1;
                }
                Some(i) => {
                    self.push(&rest[..i]);
                    let kind = match self.state {
                        State::Filling => LineKind::Whole,
                        State::Overflowing => LineKind::Truncated,
                        State::Discarding => LineKind::Discarded,
                    };
                    self.state = State::Filling;
                    on_line(std::mem::take(&mut self.buf), kind, start + i + 1);
                    start += i + 1;
                }
                None => {
                    self.push(rest);
                    break;
                }
            }
        }
    }

    fn push(&mut self, seg: &[u8]) {
        if self.state != State::Filling {
            return;
        }
        let room = self.max - self.buf.len();
        if seg.len() > room {
            self.buf.extend_from_slice(&seg[..room]);
            self.state = State::Overflowing;
        } else {
            self.buf.extend_from_slice(seg);
        }
    }

    #[cfg(test)]
    pub(crate) fn held_capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// Decodes a line (without its `\n`). Returns the text and whether it had to
/// be decoded lossily. A trailing `\r` (CRLF logs) is dropped so filters
/// anchored with `$` work on such logs too.
pub(crate) fn decode(mut bytes: Vec<u8>, truncated: bool) -> (String, bool) {
    if !truncated && bytes.last() == Some(&b'\r') {
        bytes.pop();
    }
    match String::from_utf8(bytes) {
        Ok(s) => (s, false),
        Err(e) => {
            let err = e.utf8_error();
            // Our truncation may have cut the last multi-byte character in
            // half: that is not the writer's fault, so drop the fragment
            // rather than count the line as invalid.
            if truncated && err.error_len().is_none() {
                let valid = err.valid_up_to();
                let mut bytes = e.into_bytes();
                bytes.truncate(valid);
                return match String::from_utf8(bytes) {
                    Ok(s) => (s, false),
                    Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), true),
                };
            }
            (String::from_utf8_lossy(e.as_bytes()).into_owned(), true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(asm: &mut LineAssembler, chunk: &[u8]) -> Vec<(Vec<u8>, LineKind, usize)> {
        let mut out = Vec::new();
        asm.feed(chunk, |b, k, e| out.push((b, k, e)));
        out
    }

    #[test]
    fn partial_line_is_held_across_chunks() {
        let mut asm = LineAssembler::new(100);
        assert!(collect(&mut asm, b"hel").is_empty());
        let out = collect(&mut asm, b"lo\nwor");
        assert_eq!(out, vec![(b"hello".to_vec(), LineKind::Whole, 3)]);
        let out = collect(&mut asm, b"ld\n\n");
        assert_eq!(
            out,
            vec![
                (b"world".to_vec(), LineKind::Whole, 3),
                (Vec::new(), LineKind::Whole, 4)
            ]
        );
    }

    #[test]
    fn long_line_is_truncated_with_bounded_memory() {
        let mut asm = LineAssembler::new(16);
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..10 {
            assert!(collect(&mut asm, &chunk).is_empty());
            assert!(
                asm.held_capacity() <= 64,
                "buffer grew to {}",
                asm.held_capacity()
            );
        }
        let out = collect(&mut asm, b"xx\nok\n");
        assert_eq!(out[0], (vec![b'x'; 16], LineKind::Truncated, 3));
        assert_eq!(out[1], (b"ok".to_vec(), LineKind::Whole, 6));
    }

    /// Lines come out the same whichever way the stream is cut into
    /// chunks (whole lines in one chunk take a shortcut; lines across
    /// chunks, at the limit, over it and after a discard go through the
    /// held buffer).
    #[test]
    fn chunking_does_not_change_lines() {
        let mut input = Vec::new();
        for (i, len) in [0usize, 1, 7, 8, 9, 30, 3, 8, 0, 17]
            .into_iter()
            .enumerate()
        {
            input.extend(std::iter::repeat_n(b'a' + i as u8, len));
            input.push(b'\n');
        }
        input.extend_from_slice(b"tail without newline");
        let whole = {
            let mut asm = LineAssembler::new(8);
            asm.discard_until_newline();
            collect(&mut asm, &input)
        };
        assert_eq!(whole.len(), 10);
        for size in 1..input.len() {
            let mut asm = LineAssembler::new(8);
            asm.discard_until_newline();
            let mut got = Vec::new();
            for (k, chunk) in input.chunks(size).enumerate() {
                let base = k * size;
                for (b, kind, end) in collect(&mut asm, chunk) {
                    got.push((b, kind, base + end));
                }
            }
            assert_eq!(got, whole, "chunks of {size}");
        }
    }

    #[test]
    fn exact_limit_is_not_truncated() {
        let mut asm = LineAssembler::new(4);
        let out = collect(&mut asm, b"abcd\nabcde\n");
        assert_eq!(out[0], (b"abcd".to_vec(), LineKind::Whole, 5));
        assert_eq!(out[1], (b"abcd".to_vec(), LineKind::Truncated, 11));
    }

    #[test]
    fn discard_until_newline() {
        let mut asm = LineAssembler::new(8);
        asm.discard_until_newline();
        let out = collect(&mut asm, b"tail of old\nnew\n");
        assert_eq!(out[0], (Vec::new(), LineKind::Discarded, 12));
        assert_eq!(out[1], (b"new".to_vec(), LineKind::Whole, 16));
    }

    #[test]
    fn decode_crlf_invalid_and_cut_characters() {
        assert_eq!(decode(b"a\r".to_vec(), false), ("a".to_string(), false));
        assert_eq!(
            decode(b"bad \xff byte".to_vec(), false),
            ("bad \u{fffd} byte".to_string(), true)
        );
        // "é" is C3 A9: a truncation between the two bytes is not an encoding error.
        assert_eq!(
            decode(b"caf\xc3".to_vec(), true),
            ("caf".to_string(), false)
        );
        // An unfinished character in a whole line is the writer's, so it counts.
        assert_eq!(
            decode(b"caf\xc3".to_vec(), false),
            ("caf\u{fffd}".to_string(), true)
        );
    }
}
