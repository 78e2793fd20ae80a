//! Cutting a byte stream into frames, with a hard bound on what is buffered.
//!
//! A [`Framer`] is fed whatever the port delivered ([`Framer::push`]) and reports [`Event`]s: complete frames,
//! oversized input it threw away, and garbage it skipped to find the next frame start. It never holds more
//! than `max_frame` bytes plus the length of a delimiter, whatever arrives: an endless line without a
//! terminator is discarded up to the next terminator and reported once as one oversized frame.
//!
//! Resynchronisation after garbage:
//!
//! - `line`: the next terminator ends the damage; the text before it is one (bad) frame for the parser.
//! - `delimited`: bytes before a start delimiter are skipped (counted as garbage); a frame whose end does not
//!   come within `max_frame` is dropped and the search restarts after its start delimiter.
//! - `fixed` and `length_prefixed`: with a `start` pattern, bytes before it are skipped; a length prefix that
//!   declares a frame shorter than its header or longer than `max_frame` drops one byte and searches again.
//!   Without a `start`, only the `gap` (a silence that ends any partial frame, see [`Framer::reset`]) can
//!   realign a stream that lost a byte; the device-map docs say so.
//!
//! Pure and synchronous: the fuzz target drives it directly.

/// What ends a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Terminator {
    /// `\n` (a `\r` before it is kept in the frame and trimmed by text parsers).
    Lf,
    /// `\r`.
    Cr,
    /// `\r\n`.
    CrLf,
    /// Either `\r` or `\n` (and so `\r\n` too); empty lines in between are dropped.
    Any,
    /// Any byte sequence (at least one byte).
    Custom(Vec<u8>),
}

impl Terminator {
    fn len(&self) -> usize {
        match self {
            Terminator::Lf | Terminator::Cr | Terminator::Any => 1,
            Terminator::CrLf => 2,
            Terminator::Custom(b) => b.len().max(1),
        }
    }

    /// Position of the first terminator in `buf` at or after `from`.
    fn find(&self, buf: &[u8], from: usize) -> Option<usize> {
        let hay = buf.get(from..)?;
        let at = match self {
            Terminator::Lf => hay.iter().position(|&b| b == b'\n'),
            Terminator::Cr => hay.iter().position(|&b| b == b'\r'),
            Terminator::Any => hay.iter().position(|&b| b == b'\n' || b == b'\r'),
            Terminator::CrLf => find(hay, b"\r\n"),
            Terminator::Custom(t) => find(hay, t),
        };
        at.map(|i| i + from)
    }
}

/// The first occurrence of `needle` in `hay`.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// How a stream is cut into frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FramingSpec {
    /// Text lines.
    Line {
        /// What ends a line.
        terminator: Terminator,
        /// Longest line (terminator excluded).
        max_frame: usize,
    },
    /// Frames of exactly `length` bytes, optionally starting with `start`.
    Fixed {
        /// Frame length (the `start` bytes included).
        length: usize,
        /// Bytes every frame starts with, used to resynchronise.
        start: Option<Vec<u8>>,
    },
    /// Frames between a start and an end delimiter.
    Delimited {
        /// Start delimiter.
        start: Vec<u8>,
        /// End delimiter.
        end: Vec<u8>,
        /// Longest frame content (delimiters excluded).
        max_frame: usize,
        /// Whether the frame handed on includes the delimiters (so checksum and field offsets can count them).
        keep_delimiters: bool,
    },
    /// Frames whose header says how long they are.
    LengthPrefixed {
        /// Bytes every frame starts with, used to resynchronise.
        start: Option<Vec<u8>>,
        /// Offset of the length field from the frame start.
        length_offset: usize,
        /// Size of the length field: 1, 2 or 4 bytes.
        length_size: usize,
        /// Whether the length field is little-endian.
        little_endian: bool,
        /// Added to the length field's value to get the number of bytes after the length field (e.g. `2` when
        /// a trailing CRC is not counted, `-1` when the count includes the length byte itself).
        length_adjust: i64,
        /// Longest whole frame (header included).
        max_frame: usize,
    },
}

impl FramingSpec {
    /// The most a frame can be (what the framer may buffer).
    pub fn max_frame(&self) -> usize {
        match self {
            FramingSpec::Line { max_frame, .. }
            | FramingSpec::Delimited { max_frame, .. }
            | FramingSpec::LengthPrefixed { max_frame, .. } => *max_frame,
            FramingSpec::Fixed { length, .. } => *length,
        }
    }
}

/// What the framer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete frame.
    Frame(Vec<u8>),
    /// A frame longer than `max_frame` was discarded; `bytes` is how much was thrown away.
    Oversized {
        /// Bytes discarded.
        bytes: usize,
    },
    /// Bytes skipped while looking for a frame start.
    Garbage {
        /// Bytes skipped.
        bytes: usize,
    },
}

/// Bytes fed to the state machine at once, so that the buffer stays bounded whatever the caller pushes.
const STEP: usize = 512;

/// A stream framer. See the module docs.
#[derive(Debug, Clone)]
pub struct Framer {
    spec: FramingSpec,
    buf: Vec<u8>,
    /// Where the terminator search resumes (lines), so pushes of one byte do not rescan the whole buffer.
    scanned: usize,
    /// Inside an oversized line: bytes dropped so far.
    discarding: Option<usize>,
}

impl Framer {
    /// A framer for the spec.
    pub fn new(spec: FramingSpec) -> Self {
        Framer {
            buf: Vec::with_capacity(spec.max_frame().min(4096) + 8),
            spec,
            scanned: 0,
            discarding: None,
        }
    }

    /// The spec.
    pub fn spec(&self) -> &FramingSpec {
        &self.spec
    }

    /// Bytes of an incomplete frame held right now.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Drops any partial frame (after a silence longer than the configured `gap`, or a reopened port).
    /// Returns how many bytes were dropped (an oversized line in progress counts its dropped bytes too).
    pub fn reset(&mut self) -> usize {
        let n = self.buf.len() + self.discarding.take().unwrap_or(0);
        self.buf.clear();
        self.scanned = 0;
        n
    }

    /// Feeds bytes; appends what was found to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Event>) {
        for chunk in data.chunks(STEP) {
            self.buf.extend_from_slice(chunk);
            match self.spec.clone() {
                FramingSpec::Line {
                    terminator,
                    max_frame,
                } => self.lines(&terminator, max_frame, out),
                FramingSpec::Fixed { length, start } => self.fixed(length, start.as_deref(), out),
                FramingSpec::Delimited {
                    start,
                    end,
                    max_frame,
                    keep_delimiters,
                } => self.delimited(&start, &end, max_frame, keep_delimiters, out),
                FramingSpec::LengthPrefixed {
                    start,
                    length_offset,
                    length_size,
                    little_endian,
                    length_adjust,
                    max_frame,
                } => self.length_prefixed(
                    start.as_deref(),
                    length_offset,
                    length_size,
                    little_endian,
                    length_adjust,
                    max_frame,
                    out,
                ),
            }
        }
    }

    fn lines(&mut self, t: &Terminator, max: usize, out: &mut Vec<Event>) {
        let tlen = t.len();
        loop {
            let from = self.scanned.saturating_sub(tlen - 1);
            match t.find(&self.buf, from) {
                Some(i) => {
                    let rest = self.buf.split_off(i + tlen);
                    let mut line = std::mem::replace(&mut self.buf, rest);
                    line.truncate(i);
                    self.scanned = 0;
                    match self.discarding.take() {
                        Some(dropped) => out.push(Event::Oversized {
                            bytes: dropped + line.len(),
                        }),
                        None if line.len() > max => {
                            out.push(Event::Oversized { bytes: line.len() })
                        }
                        None if line.is_empty() => {}
                        None => out.push(Event::Frame(line)),
                    }
                }
                None => {
                    self.scanned = self.buf.len();
                    // Keep what could be the start of a terminator; drop the rest once over the limit.
                    if self.buf.len() > max + tlen - 1 {
                        let keep = tlen - 1;
                        let drop = self.buf.len() - keep;
                        self.buf.drain(..drop);
                        self.scanned = self.buf.len();
                        *self.discarding.get_or_insert(0) += drop;
                    }
                    return;
                }
            }
        }
    }

    /// Skips to the first `start` in the buffer, reporting skipped bytes. Returns whether it is at the start.
    fn seek(&mut self, start: &[u8], out: &mut Vec<Event>) -> bool {
        match find(&self.buf, start) {
            Some(0) => true,
            Some(i) => {
                self.buf.drain(..i);
                out.push(Event::Garbage { bytes: i });
                true
            }
            None => {
                let keep = start.len().saturating_sub(1).min(self.buf.len());
                let drop = self.buf.len() - keep;
                // Keep a possible partial start at the end only if it matches the start's prefix.
                let drop = if keep > 0 && start.starts_with(&self.buf[drop..]) {
                    drop
                } else {
                    self.buf.len()
                };
                if drop > 0 {
                    self.buf.drain(..drop);
                    out.push(Event::Garbage { bytes: drop });
                }
                false
            }
        }
    }

    fn fixed(&mut self, length: usize, start: Option<&[u8]>, out: &mut Vec<Event>) {
        loop {
            if let Some(s) = start {
                if !self.seek(s, out) {
                    return;
                }
            }
            if self.buf.len() < length {
                return;
            }
            let rest = self.buf.split_off(length);
            out.push(Event::Frame(std::mem::replace(&mut self.buf, rest)));
        }
    }

    fn delimited(
        &mut self,
        start: &[u8],
        end: &[u8],
        max: usize,
        keep: bool,
        out: &mut Vec<Event>,
    ) {
        loop {
            if !self.seek(start, out) {
                return;
            }
            let body_from = start.len();
            match find(&self.buf[body_from..], end) {
                Some(i) if i > max => {
                    // Complete but too long: drop it whole.
                    let total = body_from + i + end.len();
                    self.buf.drain(..total);
                    out.push(Event::Oversized { bytes: total });
                }
                Some(i) => {
                    let total = body_from + i + end.len();
                    let rest = self.buf.split_off(total);
                    let mut frame = std::mem::replace(&mut self.buf, rest);
                    if !keep {
                        frame.truncate(body_from + i);
                        frame.drain(..body_from);
                    }
                    out.push(Event::Frame(frame));
                }
                None => {
                    // `max` body bytes plus a partial end delimiter may still become a frame; more may not.
                    if self.buf.len() > body_from + max + end.len().saturating_sub(1) {
                        // Drop the start delimiter and what follows up to the next start (found by `seek`).
                        self.buf.drain(..body_from);
                        let before = out.len();
                        self.seek(start, out);
                        let skipped: usize = out
                            .drain(before..)
                            .map(|e| match e {
                                Event::Garbage { bytes } => bytes,
                                _ => 0,
                            })
                            .sum();
                        out.push(Event::Oversized {
                            bytes: body_from + skipped,
                        });
                        continue;
                    }
                    return;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn length_prefixed(
        &mut self,
        start: Option<&[u8]>,
        offset: usize,
        size: usize,
        little: bool,
        adjust: i64,
        max: usize,
        out: &mut Vec<Event>,
    ) {
        let header = offset + size;
        loop {
            if let Some(s) = start {
                if !self.seek(s, out) {
                    return;
                }
            }
            if self.buf.len() < header {
                return;
            }
            let field = &self.buf[offset..header];
            let mut v: u64 = 0;
            if little {
                for &b in field.iter().rev() {
                    v = v << 8 | u64::from(b);
                }
            } else {
                for &b in field {
                    v = v << 8 | u64::from(b);
                }
            }
            let total = i128::from(v) + i128::from(adjust) + header as i128;
            if total < header as i128 || total > max as i128 {
                // A header that cannot be right: drop one byte and look again.
                self.buf.drain(..1);
                out.push(Event::Oversized { bytes: 1 });
                continue;
            }
            let total = total as usize;
            if self.buf.len() < total {
                return;
            }
            let rest = self.buf.split_off(total);
            out.push(Event::Frame(std::mem::replace(&mut self.buf, rest)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(spec: FramingSpec, chunks: &[&[u8]]) -> (Vec<Event>, Framer) {
        let mut f = Framer::new(spec);
        let mut out = Vec::new();
        for c in chunks {
            f.push(c, &mut out);
        }
        (out, f)
    }

    fn frame(b: &[u8]) -> Event {
        Event::Frame(b.to_vec())
    }

    fn line(t: Terminator, max: usize) -> FramingSpec {
        FramingSpec::Line {
            terminator: t,
            max_frame: max,
        }
    }

    #[test]
    fn lines_with_each_terminator() {
        let (ev, _) = run(line(Terminator::Lf, 64), &[b"a\nbc", b"\r\n\n"]);
        assert_eq!(ev, vec![frame(b"a"), frame(b"bc\r")]);
        let (ev, _) = run(line(Terminator::CrLf, 64), &[b"a\r", b"\nb\rc\r\n"]);
        assert_eq!(ev, vec![frame(b"a"), frame(b"b\rc")]);
        let (ev, _) = run(line(Terminator::Cr, 64), &[b"x\ry\r"]);
        assert_eq!(ev, vec![frame(b"x"), frame(b"y")]);
        let (ev, _) = run(line(Terminator::Any, 64), &[b"x\r\ny\n\rz\r"]);
        assert_eq!(ev, vec![frame(b"x"), frame(b"y"), frame(b"z")]);
        let (ev, f) = run(
            line(Terminator::Custom(b"<END>".to_vec()), 64),
            &[b"one<E", b"ND>two<EN"],
        );
        assert_eq!(ev, vec![frame(b"one")]);
        assert_eq!(f.buffered(), 6);
    }

    #[test]
    fn partial_line_waits_for_its_terminator() {
        let (ev, f) = run(line(Terminator::Lf, 64), &[b"12.5", b" kg"]);
        assert!(ev.is_empty());
        assert_eq!(f.buffered(), 7);
    }

    #[test]
    fn oversized_line_is_dropped_whole_and_bounded() {
        let spec = line(Terminator::CrLf, 8);
        let mut f = Framer::new(spec);
        let mut out = Vec::new();
        f.push(b"ok\r\n", &mut out);
        for _ in 0..1000 {
            f.push(b"xxxxxxxxxxxxxxxxxxxxxxxxxxxx", &mut out);
            assert!(f.buffered() <= 9, "{}", f.buffered());
        }
        f.push(b"yy\r\nnext\r\n", &mut out);
        assert_eq!(
            out,
            vec![
                frame(b"ok"),
                Event::Oversized { bytes: 28_000 + 2 },
                frame(b"next")
            ]
        );
        // A line of exactly max bytes is fine, one more is not.
        let (ev, _) = run(line(Terminator::CrLf, 4), &[b"abcd\r\nabcde\r\n"]);
        assert_eq!(ev, vec![frame(b"abcd"), Event::Oversized { bytes: 5 }]);
    }

    #[test]
    fn reset_drops_partial() {
        let mut f = Framer::new(line(Terminator::Lf, 64));
        let mut out = Vec::new();
        f.push(b"half", &mut out);
        assert_eq!(f.reset(), 4);
        f.push(b"whole\n", &mut out);
        assert_eq!(out, vec![frame(b"whole")]);
    }

    #[test]
    fn fixed_frames_resync_on_start() {
        let spec = FramingSpec::Fixed {
            length: 4,
            start: Some(vec![0xAA]),
        };
        let (ev, _) = run(spec, &[&[1, 2, 0xAA, 1, 2], &[3, 0xAA, 9, 9, 9, 0xAA]]);
        assert_eq!(
            ev,
            vec![
                Event::Garbage { bytes: 2 },
                frame(&[0xAA, 1, 2, 3]),
                frame(&[0xAA, 9, 9, 9])
            ]
        );
        let (ev, _) = run(
            FramingSpec::Fixed {
                length: 2,
                start: None,
            },
            &[&[1, 2, 3]],
        );
        assert_eq!(ev, vec![frame(&[1, 2])]);
    }

    #[test]
    fn delimited_frames() {
        let spec = FramingSpec::Delimited {
            start: vec![0x02],
            end: vec![0x03],
            max_frame: 5,
            keep_delimiters: false,
        };
        let (ev, _) = run(
            spec.clone(),
            &[b"junk\x02ab", b"c\x03\x02toolongxx", b"x\x03\x02ok\x03"],
        );
        assert_eq!(
            ev,
            vec![
                Event::Garbage { bytes: 4 },
                frame(b"abc"),
                // The start delimiter and the 9 bytes after it, up to the end of what had arrived.
                Event::Oversized { bytes: 10 },
                Event::Garbage { bytes: 2 },
                frame(b"ok")
            ]
        );
        let keep = FramingSpec::Delimited {
            start: b"<<".to_vec(),
            end: b">>".to_vec(),
            max_frame: 16,
            keep_delimiters: true,
        };
        let (ev, _) = run(keep, &[b"<<a>", b">"]);
        assert_eq!(ev, vec![frame(b"<<a>>")]);
    }

    #[test]
    fn delimited_buffer_is_bounded() {
        let spec = FramingSpec::Delimited {
            start: vec![0x02],
            end: vec![0x03],
            max_frame: 16,
            keep_delimiters: false,
        };
        let mut f = Framer::new(spec);
        let mut out = Vec::new();
        for _ in 0..100 {
            f.push(&[0x02; 40], &mut out);
            f.push(&[b'x'; 40], &mut out);
            assert!(f.buffered() <= 18, "{}", f.buffered());
        }
        assert!(out.iter().all(|e| !matches!(e, Event::Frame(_))));
    }

    #[test]
    fn length_prefixed_frames() {
        // start 0x7E, length byte (counts payload only), payload, then a 2-byte CRC not counted.
        let spec = FramingSpec::LengthPrefixed {
            start: Some(vec![0x7E]),
            length_offset: 1,
            length_size: 1,
            little_endian: false,
            length_adjust: 2,
            max_frame: 16,
        };
        let (ev, _) = run(
            spec.clone(),
            &[
                &[0x00, 0x7E, 0x02, 0xA, 0xB, 0xC],
                &[0xD, 0x7E, 0xFF, 0x7E, 0x00, 1, 2],
            ],
        );
        assert_eq!(
            ev,
            vec![
                Event::Garbage { bytes: 1 },
                frame(&[0x7E, 0x02, 0xA, 0xB, 0xC, 0xD]),
                Event::Oversized { bytes: 1 },
                Event::Garbage { bytes: 1 },
                frame(&[0x7E, 0x00, 1, 2])
            ]
        );
        // Little-endian 16-bit length at offset 0, no start.
        let spec = FramingSpec::LengthPrefixed {
            start: None,
            length_offset: 0,
            length_size: 2,
            little_endian: true,
            length_adjust: 0,
            max_frame: 300,
        };
        let (ev, _) = run(spec, &[&[3, 0, 1, 2], &[3, 1, 0, 9]]);
        assert_eq!(ev, vec![frame(&[3, 0, 1, 2, 3]), frame(&[1, 0, 9])]);
    }
}
