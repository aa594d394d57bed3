//! COPY … TO STDOUT: the masking of its data ([`CopyPlan`]); the options
//! of the statement are parsed by [`copy_options`](super::copy_options).
//!
//! Text and CSV rows are parsed field by field (escapes, quotes, the NULL
//! string), masked like result values (a masked column's values become
//! `****`, the detectors run over every field's decoded text), and written
//! back with the escaping of the format, one CopyData message per row as
//! the server sends them. A row split across CopyData messages is held
//! back (bounded) until it is complete. Binary COPY cannot be masked (its
//! values carry no types) and is refused while masks are active.

use policy::ActiveMasks;

use super::super::codec::{self, CodecError};
use super::value;

/// What the client is told when a binary COPY is refused.
pub const BINARY_COPY_REFUSED: &str = "interceptor: binary COPY cannot be masked; use COPY … TO STDOUT (FORMAT text) or (FORMAT csv) instead";

/// Longest row held back while waiting for the rest of it.
pub const MAX_PENDING_ROW: usize = 16 << 20;

/// The data format of a COPY, from its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyFormat {
    /// Text format: fields separated by `delimiter`, backslash escapes,
    /// NULL written as `null`.
    Text {
        delimiter: u8,
        null: Vec<u8>,
    },
    /// CSV: fields separated by `delimiter`, quoted with `quote`, `escape`
    /// before a quote (or escape) inside quotes, NULL written (unquoted)
    /// as `null`.
    Csv {
        delimiter: u8,
        quote: u8,
        escape: u8,
        null: Vec<u8>,
    },
    Binary,
}

impl CopyFormat {
    /// Text format with the default options (tab, `\N`).
    pub fn text() -> CopyFormat {
        CopyFormat::Text {
            delimiter: b'\t',
            null: b"\\N".to_vec(),
        }
    }

    /// CSV with the default options (`,`, `"`, `"`, empty NULL string).
    pub fn csv() -> CopyFormat {
        CopyFormat::Csv {
            delimiter: b',',
            quote: b'"',
            escape: b'"',
            null: Vec::new(),
        }
    }
}

/// Whether a COPY in `format` must be refused under `masks` (binary COPY
/// while any mask is active). Refuse with [`BINARY_COPY_REFUSED`].
pub fn binary_copy_refused(masks: &ActiveMasks, format: &CopyFormat) -> bool {
    *format == CopyFormat::Binary && !masks.is_empty()
}

/// What to do with one CopyData message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyOut {
    /// Forward the message as it came.
    Forward,
    /// Send these bytes instead: zero or more whole CopyData messages
    /// (type byte included), one per row.
    Replace(Vec<u8>),
}

/// The masking of one COPY OUT's data.
#[derive(Debug)]
pub struct CopyPlan {
    format: CopyFormat,
    column_masked: Vec<bool>,
    ncols: usize,
    /// Bytes of a row not complete yet.
    pending: Vec<u8>,
    /// How far `pending` has been scanned for the end of its row, and the
    /// scanner's state there.
    scan: Scan,
    max_pending: usize,
}

#[derive(Debug, Default, Clone, Copy)]
struct Scan {
    pos: usize,
    in_quote: bool,
}

impl CopyPlan {
    /// The plan for a COPY OUT whose statement gave `format`, whose column
    /// `i` is masked whole when `column_masked[i]` (positions past the end:
    /// not masked), and whose server answered with CopyOutResponse
    /// `response` (the body of the 'H' message). Errors: a response that
    /// does not decode, or whose formats do not agree with `format`
    /// (binary data where text was expected, or the reverse), or a binary
    /// COPY (which cannot be masked: see [`binary_copy_refused`]).
    pub fn new(
        format: CopyFormat,
        column_masked: Vec<bool>,
        response: &[u8],
    ) -> Result<CopyPlan, CodecError> {
        let (overall, formats) = codec::copy_response(response)?;
        if format == CopyFormat::Binary || overall != 0 || formats.iter().any(|f| *f != 0) {
            return Err(CodecError::malformed(
                "CopyOutResponse",
                "binary COPY data cannot be masked",
            ));
        }
        Ok(CopyPlan {
            format,
            column_masked,
            ncols: formats.len(),
            pending: Vec::new(),
            scan: Scan::default(),
            max_pending: MAX_PENDING_ROW,
        })
    }

    /// Sets the longest row held back (default [`MAX_PENDING_ROW`]).
    pub fn with_max_pending(mut self, n: usize) -> CopyPlan {
        self.max_pending = n;
        self
    }

    /// Masks the body of one CopyData message.
    pub fn mask_copy_data(
        &mut self,
        masks: &ActiveMasks,
        data: &[u8],
    ) -> Result<CopyOut, CodecError> {
        let fresh = self.pending.is_empty();
        self.pending.extend_from_slice(data);
        let mut out = Vec::new();
        let mut changed = !fresh;
        let mut start = 0;
        while let Some(end) = self.next_row_end() {
            let row = &self.pending[start..end];
            match self.mask_row(masks, row)? {
                Some(new) => {
                    changed = true;
                    codec::message(&mut out, b'd', |b| b.extend_from_slice(&new));
                }
                None => codec::message(&mut out, b'd', |b| b.extend_from_slice(row)),
            }
            start = end;
            self.scan = Scan {
                pos: end,
                in_quote: false,
            };
        }
        let rest = self.pending.len() - start;
        if rest > 0 {
            changed = true;
        }
        if rest > self.max_pending {
            return Err(CodecError::malformed("CopyData", "row too long"));
        }
        self.pending.drain(..start);
        self.scan.pos -= start;
        Ok(if changed {
            CopyOut::Replace(out)
        } else {
            CopyOut::Forward
        })
    }

    /// At CopyDone: the masked last row if the data did not end with a
    /// newline (`None`: nothing was held back).
    pub fn finish(&mut self, masks: &ActiveMasks) -> Result<Option<Vec<u8>>, CodecError> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let row = std::mem::take(&mut self.pending);
        if self.scan_to(&row, row.len()).is_some() || self.scan.in_quote {
            return Err(CodecError::malformed(
                "CopyData",
                "data ends inside a quoted field",
            ));
        }
        self.scan = Scan::default();
        let new = self.mask_row(masks, &row)?.unwrap_or(row);
        let mut out = Vec::new();
        codec::message(&mut out, b'd', |b| b.extend_from_slice(&new));
        Ok(Some(out))
    }

    /// The end (after its newline) of the first complete row in
    /// `pending` from the scan position.
    fn next_row_end(&mut self) -> Option<usize> {
        let buf = std::mem::take(&mut self.pending);
        let r = self.scan_to(&buf, buf.len());
        self.pending = buf;
        r
    }

    /// Scans `buf[self.scan.pos..limit]` for the newline that ends a row;
    /// stops (without consuming) at an escape whose next byte is not there
    /// yet.
    fn scan_to(&mut self, buf: &[u8], limit: usize) -> Option<usize> {
        let mut i = self.scan.pos;
        let mut in_quote = self.scan.in_quote;
        let found = loop {
            let Some(&c) = buf[..limit].get(i) else {
                break None;
            };
            match &self.format {
                CopyFormat::Text { .. } | CopyFormat::Binary => {
                    if c == b'\\' {
                        if i + 1 >= limit {
                            break None;
                        }
                        i += 2;
                        continue;
                    }
                }
                CopyFormat::Csv { quote, escape, .. } => {
                    if in_quote && c == *escape && escape != quote {
                        match buf[..limit].get(i + 1) {
                            None => break None,
                            Some(n) if n == quote || n == escape => {
                                i += 2;
                                continue;
                            }
                            Some(_) => {}
                        }
                    }
                    if c == *quote {
                        in_quote = !in_quote;
                        i += 1;
                        continue;
                    }
                    if in_quote {
                        i += 1;
                        continue;
                    }
                }
            }
            i += 1;
            if c == b'\n' {
                break Some(i);
            }
        };
        self.scan = Scan { pos: i, in_quote };
        found
    }

    /// Masks one row (with its line ending, if any). `None`: unchanged.
    fn mask_row(&self, masks: &ActiveMasks, row: &[u8]) -> Result<Option<Vec<u8>>, CodecError> {
        let (line, eol) = split_eol(row);
        let fields = match &self.format {
            CopyFormat::Text { delimiter, null } => text_fields(line, *delimiter, null),
            CopyFormat::Csv {
                delimiter,
                quote,
                escape,
                null,
            } => csv_fields(line, *delimiter, *quote, *escape, null),
            CopyFormat::Binary => None,
        }
        .ok_or(CodecError::malformed("CopyData", "row does not parse"))?;
        if fields.len() != self.ncols {
            return Err(CodecError::malformed(
                "CopyData",
                "row has another number of fields than the COPY has columns",
            ));
        }
        let mut changed = false;
        let mut news: Vec<Option<Option<Vec<u8>>>> = Vec::with_capacity(fields.len());
        for (i, f) in fields.iter().enumerate() {
            let masked = self.column_masked.get(i).copied().unwrap_or(false);
            let new = match &f.value {
                // NULL stays NULL.
                None => None,
                Some(_) if masked => Some(Some(value::MASKED_TEXT.to_vec())),
                Some(v) => match value::detect_text(masks, v) {
                    Some(m) if value::fires(masks, &m) => Some(None),
                    Some(m) => Some(Some(m)),
                    None => None,
                },
            };
            changed |= new.is_some();
            news.push(new);
        }
        if !changed {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(row.len() + 16);
        for (i, (f, new)) in fields.iter().zip(news).enumerate() {
            if i > 0 {
                out.push(self.delimiter());
            }
            match new {
                None => out.extend_from_slice(f.raw),
                Some(None) => out.extend_from_slice(self.null()),
                Some(Some(v)) => self.encode(&mut out, &v),
            }
        }
        out.extend_from_slice(eol);
        Ok(Some(out))
    }

    fn delimiter(&self) -> u8 {
        match &self.format {
            CopyFormat::Text { delimiter, .. } | CopyFormat::Csv { delimiter, .. } => *delimiter,
            CopyFormat::Binary => b'\t',
        }
    }

    fn null(&self) -> &[u8] {
        match &self.format {
            CopyFormat::Text { null, .. } | CopyFormat::Csv { null, .. } => null,
            CopyFormat::Binary => b"",
        }
    }

    /// Appends a (non-NULL) field value with the format's escaping.
    fn encode(&self, out: &mut Vec<u8>, v: &[u8]) {
        match &self.format {
            CopyFormat::Text { delimiter, .. } => {
                for &c in v {
                    match c {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b'\r' => out.extend_from_slice(b"\\r"),
                        b'\t' => out.extend_from_slice(b"\\t"),
                        8 => out.extend_from_slice(b"\\b"),
                        12 => out.extend_from_slice(b"\\f"),
                        11 => out.extend_from_slice(b"\\v"),
                        c if c == *delimiter => out.extend_from_slice(&[b'\\', c]),
                        c => out.push(c),
                    }
                }
            }
            CopyFormat::Csv { quote, escape, .. } => {
                // Always quoted: never taken for the NULL string, and any
                // delimiter, quote or newline inside stays data.
                out.push(*quote);
                for &c in v {
                    if c == *quote || c == *escape {
                        out.push(*escape);
                    }
                    out.push(c);
                }
                out.push(*quote);
            }
            CopyFormat::Binary => {}
        }
    }
}

/// A row without its line ending (`\n` or `\r\n`), and the ending.
fn split_eol(row: &[u8]) -> (&[u8], &[u8]) {
    if let Some(l) = row.strip_suffix(b"\r\n") {
        (l, &row[l.len()..])
    } else if let Some(l) = row.strip_suffix(b"\n") {
        (l, &row[l.len()..])
    } else {
        (row, &[])
    }
}

struct Field<'a> {
    raw: &'a [u8],
    /// Decoded value; `None` is NULL.
    value: Option<Vec<u8>>,
}

/// The fields of a text-format line.
fn text_fields<'a>(line: &'a [u8], delimiter: u8, null: &[u8]) -> Option<Vec<Field<'a>>> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut i = 0;
    loop {
        if i == line.len() || line[i] == delimiter {
            let raw = &line[start..i];
            let value = if raw == null {
                None
            } else {
                Some(text_unescape(raw)?)
            };
            fields.push(Field { raw, value });
            if i == line.len() {
                return Some(fields);
            }
            i += 1;
            start = i;
        } else if line[i] == b'\\' {
            if i + 1 >= line.len() {
                return None;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
}

fn text_unescape(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = *raw.get(i + 1)?;
        i += 2;
        match e {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                let mut n = 1;
                while n < 3 && matches!(raw.get(i), Some(b'0'..=b'7')) {
                    v = v * 8 + u32::from(raw[i] - b'0');
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            b'x' if raw.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 && raw.get(i).is_some_and(u8::is_ascii_hexdigit) {
                    v = v * 16 + (raw[i] as char).to_digit(16).unwrap_or(0);
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    Some(out)
}

/// The fields of a CSV line (a line may hold newlines inside quotes).
fn csv_fields<'a>(
    line: &'a [u8],
    delimiter: u8,
    quote: u8,
    escape: u8,
    null: &[u8],
) -> Option<Vec<Field<'a>>> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut val = Vec::new();
    let mut quoted = false;
    let mut in_quote = false;
    loop {
        if !in_quote && (i == line.len() || line[i] == delimiter) {
            let raw = &line[start..i];
            let value = if !quoted && raw == null {
                None
            } else {
                Some(std::mem::take(&mut val))
            };
            val.clear();
            fields.push(Field { raw, value });
            if i == line.len() {
                return Some(fields);
            }
            i += 1;
            start = i;
            quoted = false;
            continue;
        }
        let Some(&c) = line.get(i) else {
            // End of line inside quotes.
            return None;
        };
        if in_quote
            && c == escape
            && escape != quote
            && let Some(&n) = line.get(i + 1)
            && (n == quote || n == escape)
        {
            val.push(n);
            i += 2;
            continue;
        }
        if c == quote {
            if in_quote && escape == quote && line.get(i + 1) == Some(&quote) {
                val.push(quote);
                i += 2;
                continue;
            }
            in_quote = !in_quote;
            quoted = true;
            i += 1;
            continue;
        }
        val.push(c);
        i += 1;
    }
}
