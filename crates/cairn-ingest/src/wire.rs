//! A protobuf reader for the remote_write `WriteRequest`, borrowing label text from the
//! decompressed body instead of allocating a `String` per label as the generated prost types do.
//!
//! It accepts and refuses exactly what `prompb::WriteRequest::decode` accepts and refuses (the test
//! `the_fast_decoder_agrees_with_prost` holds it to that on random and mutated inputs): the same
//! varint and key rules, wire-type checks for every known field, packed and unpacked repeated
//! numbers, UTF-8 checks on every string (also in metadata and exemplars), unknown fields and
//! groups skipped, and prost's nesting limit of 100. Exemplars, histograms and metadata are
//! checked and dropped, as before: Cairn scores float samples only. When a scalar field appears
//! twice, the last one wins, as in prost.

use std::fmt;
use std::ops::Range;

/// Why the bytes are not a `WriteRequest`, with the byte offset (within the enclosing message);
/// or, with `over`, the count limit the request went past while it was being read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct WireError {
    what: &'static str,
    at: usize,
    /// `(what, limit)` when decoding stopped at a count limit rather than at bad bytes.
    pub over: Option<(&'static str, usize)>,
}

/// How much one request may decode into: decoding stops as soon as one is passed, so a small body
/// that expands into many series cannot make the reader allocate past what the limits allow.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Caps {
    pub series: usize,
    pub points: usize,
    pub labels: usize,
}

impl Caps {
    /// No limits (for comparing with prost on arbitrary input).
    #[cfg(test)]
    pub const NONE: Caps = Caps { series: usize::MAX, points: usize::MAX, labels: usize::MAX };
}

fn over(what: &'static str, limit: usize) -> WireError {
    WireError { what, at: 0, over: Some((what, limit)) }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at byte {} of its message)", self.what, self.at)
    }
}

/// A decoded request, borrowing from the body: each series' labels in wire order and its points.
#[derive(Debug, Default)]
pub(crate) struct WireRequest<'a> {
    pub labels: Vec<(&'a str, &'a str)>,
    pub points: Vec<(i64, f64)>,
    /// Per series: its range in `labels` and in `points`.
    pub series: Vec<(Range<usize>, Range<usize>)>,
}

/// Prost's `RECURSION_LIMIT`: how deeply messages and groups may nest.
const RECURSION_LIMIT: u32 = 100;

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

type Result<T> = std::result::Result<T, WireError>;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn fail<T>(&self, what: &'static str) -> Result<T> {
        Err(WireError { what, at: self.pos, over: None })
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64> {
        // Keys, lengths and small numbers are one byte.
        if let Some(&b) = self.buf.get(self.pos)
            && b < 0x80
        {
            self.pos += 1;
            return Ok(u64::from(b));
        }
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else { return self.fail("truncated varint") };
            self.pos += 1;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                // The tenth byte may only carry the top bit of a u64.
                if i == 9 && b >= 0x02 {
                    return self.fail("varint overflows 64 bits");
                }
                return Ok(value);
            }
        }
        self.fail("varint longer than 10 bytes")
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let rest = self.buf.len() - self.pos;
        if n > rest as u64 {
            return self.fail("field runs past the end of its message");
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    /// A field key: (field number, wire type).
    fn key(&mut self) -> Result<(u32, u8)> {
        let key = self.varint()?;
        if key > u64::from(u32::MAX) {
            return self.fail("field key out of range");
        }
        let wire = (key & 7) as u8;
        if wire > FIXED32 {
            return self.fail("invalid wire type");
        }
        if key >> 3 == 0 {
            return self.fail("field number 0");
        }
        Ok(((key >> 3) as u32, wire))
    }

    fn expect(&self, wire: u8, want: u8) -> Result<()> {
        if wire == want { Ok(()) } else { self.fail("wrong wire type for a known field") }
    }

    fn bytes(&mut self, wire: u8) -> Result<&'a [u8]> {
        self.expect(wire, LEN)?;
        let n = self.varint()?;
        self.take(n)
    }

    /// Where a length-delimited field's bytes are, within this message.
    fn span(&mut self, wire: u8) -> Result<Range<usize>> {
        let b = self.bytes(wire)?;
        Ok(self.pos - b.len()..self.pos)
    }

    fn string(&mut self, wire: u8) -> Result<&'a str> {
        let at = self.pos;
        let b = self.bytes(wire)?;
        std::str::from_utf8(b).map_err(|_| WireError { what: "string is not valid UTF-8", at, over: None })
    }

    /// The body of a nested message whose fields are read at `depth - 1`.
    fn message(&mut self, wire: u8, depth: u32) -> Result<&'a [u8]> {
        self.expect(wire, LEN)?;
        if depth == 0 {
            return self.fail("messages nested too deeply");
        }
        let n = self.varint()?;
        self.take(n)
    }

    fn fixed64(&mut self, wire: u8) -> Result<u64> {
        self.expect(wire, FIXED64)?;
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or_default()))
    }

    fn varint_field(&mut self, wire: u8) -> Result<u64> {
        self.expect(wire, VARINT)?;
        self.varint()
    }

    /// A repeated varint field: one value, or a packed run of them.
    fn repeated_varint(&mut self, wire: u8) -> Result<()> {
        if wire != LEN {
            return self.varint_field(wire).map(drop);
        }
        let n = self.varint()?;
        let mut packed = Reader::new(self.take(n)?);
        while !packed.done() {
            packed.varint()?;
        }
        Ok(())
    }

    /// A repeated fixed64 field: one value, or a packed run of them.
    fn repeated_fixed64(&mut self, wire: u8) -> Result<()> {
        if wire != LEN {
            return self.fixed64(wire).map(drop);
        }
        let n = self.varint()?;
        if n % 8 != 0 {
            return self.fail("packed fixed64 run is not a multiple of 8 bytes");
        }
        self.take(n).map(drop)
    }

    /// Skips an unknown field, as prost does (groups included).
    fn skip(&mut self, tag: u32, wire: u8, depth: u32) -> Result<()> {
        if depth == 0 {
            return self.fail("messages nested too deeply");
        }
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            FIXED32 => self.take(4).map(drop),
            LEN => {
                let n = self.varint()?;
                self.take(n).map(drop)
            }
            START_GROUP => loop {
                let (inner, inner_wire) = self.key()?;
                if inner_wire == END_GROUP {
                    return if inner == tag { Ok(()) } else { self.fail("end of a group that was not started") };
                }
                self.skip(inner, inner_wire, depth - 1)?;
            },
            _ => self.fail("end of a group that was not started"),
        }
    }
}

/// Reads the fields of one message at `depth`; `known` handles a field and returns `false` for
/// one it does not know, which is then skipped.
fn fields<'a>(
    body: &'a [u8],
    depth: u32,
    mut known: impl FnMut(&mut Reader<'a>, u32, u8) -> Result<bool>,
) -> Result<()> {
    let mut r = Reader::new(body);
    while !r.done() {
        let (tag, wire) = r.key()?;
        if !known(&mut r, tag, wire)? {
            r.skip(tag, wire, depth)?;
        }
    }
    Ok(())
}

/// Decodes a `WriteRequest`, stopping at the first of `caps` it passes.
pub(crate) fn decode_write_request(body: &[u8], caps: Caps) -> Result<WireRequest<'_>> {
    // Room for typical requests up front (a label takes ~30 bytes on the wire, a sample ~15, a
    // series ~300), so the vectors are not regrown and copied while reading; exact figures would
    // need a second pass. Never more than the caps allow, whatever the body claims.
    let mut out = WireRequest {
        labels: Vec::with_capacity((body.len() / 32).min(caps.labels)),
        points: Vec::with_capacity((body.len() / 48).min(caps.points)),
        series: Vec::with_capacity((body.len() / 256).min(caps.series)),
    };
    let depth = RECURSION_LIMIT;
    fields(body, depth, |r, tag, wire| {
        match tag {
            1 => {
                if out.series.len() >= caps.series {
                    return Err(over("series", caps.series));
                }
                time_series(r.message(wire, depth)?, depth - 1, &mut out, caps)?
            }
            3 => metadata(r.message(wire, depth)?, depth - 1)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(out)
}

fn time_series<'a>(body: &'a [u8], depth: u32, out: &mut WireRequest<'a>, caps: Caps) -> Result<()> {
    let (first_label, first_point) = (out.labels.len(), out.points.len());
    fields(body, depth, |r, tag, wire| {
        match tag {
            1 => {
                if out.labels.len() >= caps.labels {
                    return Err(over("labels", caps.labels));
                }
                out.labels.push(label(r.message(wire, depth)?, depth - 1)?)
            }
            2 => {
                if out.points.len() >= caps.points {
                    return Err(over("samples", caps.points));
                }
                out.points.push(sample(r.message(wire, depth)?, depth - 1)?)
            }
            3 => exemplar(r.message(wire, depth)?, depth - 1)?,
            4 => histogram(r.message(wire, depth)?, depth - 1)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    out.series.push((first_label..out.labels.len(), first_point..out.points.len()));
    Ok(())
}

fn label(body: &[u8], depth: u32) -> Result<(&str, &str)> {
    // A typical label message (short ASCII strings, their keys and lengths) is valid UTF-8 as a
    // whole: then one check covers both strings, which are sliced out of it. Otherwise each
    // string is checked on its own.
    if let Ok(text) = std::str::from_utf8(body) {
        let (mut name, mut value) = (0..0, 0..0);
        fields(body, depth, |r, tag, wire| {
            match tag {
                1 => name = r.span(wire)?,
                2 => value = r.span(wire)?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        return match (text.get(name), text.get(value)) {
            (Some(n), Some(v)) => Ok((n, v)),
            _ => Err(WireError { what: "string is not valid UTF-8", at: 0, over: None }),
        };
    }
    let (mut name, mut value) = ("", "");
    fields(body, depth, |r, tag, wire| {
        match tag {
            1 => name = r.string(wire)?,
            2 => value = r.string(wire)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok((name, value))
}

fn sample(body: &[u8], depth: u32) -> Result<(i64, f64)> {
    let (mut timestamp, mut value) = (0i64, 0f64);
    fields(body, depth, |r, tag, wire| {
        match tag {
            1 => value = f64::from_bits(r.fixed64(wire)?),
            2 => timestamp = r.varint_field(wire)? as i64,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok((timestamp, value))
}

fn exemplar(body: &[u8], depth: u32) -> Result<()> {
    fields(body, depth, |r, tag, wire| {
        match tag {
            1 => label(r.message(wire, depth)?, depth - 1).map(drop)?,
            2 => r.fixed64(wire).map(drop)?,
            3 => r.varint_field(wire).map(drop)?,
            _ => return Ok(false),
        }
        Ok(true)
    })
}

fn histogram(body: &[u8], depth: u32) -> Result<()> {
    fields(body, depth, |r, tag, wire| {
        match tag {
            // count_int, schema, zero_count_int, reset_hint, timestamp
            1 | 4 | 6 | 14 | 15 => r.varint_field(wire).map(drop)?,
            // count_float, sum, zero_threshold, zero_count_float
            2 | 3 | 5 | 7 => r.fixed64(wire).map(drop)?,
            // negative_spans, positive_spans
            8 | 11 => bucket_span(r.message(wire, depth)?, depth - 1)?,
            // negative_deltas, positive_deltas
            9 | 12 => r.repeated_varint(wire)?,
            // negative_counts, positive_counts
            10 | 13 => r.repeated_fixed64(wire)?,
            _ => return Ok(false),
        }
        Ok(true)
    })
}

fn bucket_span(body: &[u8], depth: u32) -> Result<()> {
    fields(body, depth, |r, tag, wire| {
        match tag {
            1 | 2 => r.varint_field(wire).map(drop)?,
            _ => return Ok(false),
        }
        Ok(true)
    })
}

fn metadata(body: &[u8], depth: u32) -> Result<()> {
    fields(body, depth, |r, tag, wire| {
        match tag {
            1 => r.varint_field(wire).map(drop)?,
            2 | 4 | 5 => r.string(wire).map(drop)?,
            _ => return Ok(false),
        }
        Ok(true)
    })
}
