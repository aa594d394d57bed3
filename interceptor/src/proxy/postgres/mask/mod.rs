//! Masking of result values (DataRow), server texts (ErrorResponse,
//! NoticeResponse, NotificationResponse) and COPY OUT data.
//!
//! A [`RowPlan`] is built once per RowDescription (and set of columns the
//! statement analysis forces masked): for each column, whether it is
//! masked whole, or only looked at by the detectors, and in which format
//! its values come. Then each DataRow is rewritten value by value, with
//! correct lengths; the RowDescription itself never changes, so every
//! replacement is a valid value of the column's type in its format, or
//! NULL:
//!
//! | column type | masked column (text / binary format) | detectors |
//! |---|---|---|
//! | strings (text, varchar, bpchar, name, unknown, xml, refcursor) | `****` | over the string |
//! | `"char"` | `*` | over the string |
//! | json, jsonb | `"****"` (binary jsonb: version byte, then `"****"`) | over the JSON text |
//! | numbers (int2/4/8, oid, numeric, float4/8, money) | `0` / zero of the type's width | never |
//! | bytea | NULL | over the decoded bytes (text: rewritten in hex) |
//! | types with no free text (bool, dates and times, uuid, network, bit strings, geometry, reg*) | NULL | never |
//! | arrays of built-in types | element by element (text literal rebuilt; binary header, dimensions and element OID kept) | element by element |
//! | records | text: NULL; binary: field by field by each field's OID | field by field |
//! | any other type (enums, composites, domains, extension types such as citext or hstore) | NULL | see below |
//!
//! For a type it does not know, and for arrays and records, the detectors
//! first look at the whole value (binary: its bytes read as UTF-8); a value
//! in which they find nothing is sent unchanged. Otherwise the value is
//! decoded (binary: as an array, else a record; text: as an array or
//! record literal, else each run of the literal between quotes and
//! brackets is masked on its own), and the result is scanned again: a
//! value that does not decode, or in which a detector still finds
//! something, becomes NULL. So a value in which a detector finds something
//! never leaves with it in clear, and a masked column never leaves a
//! non-NULL value unchanged.
//!
//! COPY OUT data is masked by a [`CopyPlan`] (the statement's options from
//! [`copy_statement_format`] or [`copy_options`]), server texts by
//! [`mask_error`], [`withhold_error`] and [`mask_notification`]. Nothing
//! here panics or allocates by a length the server announces; the
//! `pg_mask` fuzz target holds it to that and to the invariants above.

mod binary;
mod copy;
mod copy_options;
mod literal;
mod types;
mod value;

use policy::ActiveMasks;

use super::codec::{self, CodecError, DataRowIter};
use value::{Mode, Repl};

pub use copy::{
    BINARY_COPY_REFUSED, CopyFormat, CopyOut, CopyPlan, MAX_PENDING_ROW, binary_copy_refused,
};
pub use copy_options::{CopyOptionsError, copy_options, copy_statement_format};

/// How one column's values are masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Col {
    /// Left alone.
    Pass,
    /// Masked whole (by its label or because the statement computes it
    /// from a masked column).
    Masked { oid: u32, binary: bool },
    /// Looked at by the detectors.
    Detect { oid: u32, binary: bool },
    /// Unknown type and format (a DataRow that does not match its
    /// description): NULL when a detector finds something in it.
    Blind,
    /// NULL whatever it is ([`RowPlan::withhold_all`]).
    Withheld,
}

/// The masking plan of one result description.
#[derive(Debug, Clone, Default)]
pub struct RowPlan {
    cols: Vec<Col>,
    /// Whether any value needs looking at.
    active: bool,
    /// Whether a column is masked whole.
    masks_columns: bool,
    /// Whether DataRows arrive without a description (then every value is
    /// [`Col::Blind`]).
    blind: bool,
    /// Whether every value becomes NULL ([`RowPlan::withhold_all`]).
    withhold: bool,
}

impl RowPlan {
    /// The plan for a RowDescription body under `masks`. Column `i` is
    /// masked whole when its label matches a column rule or when
    /// `forced[i]` is true (positions past the end of `forced` count as
    /// false).
    pub fn new(body: &[u8], masks: &ActiveMasks, forced: &[bool]) -> Result<RowPlan, CodecError> {
        let fields = codec::row_description(body)?;
        let detect = !masks.detectors().is_empty();
        let mut cols = Vec::with_capacity(fields.len());
        for (i, f) in fields.iter().enumerate() {
            let binary = match f.format {
                0 => false,
                1 => true,
                _ => {
                    return Err(CodecError::malformed(
                        "RowDescription",
                        "format code is neither 0 nor 1",
                    ));
                }
            };
            let masked = forced.get(i).copied().unwrap_or(false)
                || masks.column_masked(&String::from_utf8_lossy(f.name));
            let oid = f.type_oid;
            cols.push(if masked {
                Col::Masked { oid, binary }
            } else if detect && types::class(oid).may_hold_text() {
                Col::Detect { oid, binary }
            } else {
                Col::Pass
            });
        }
        let active = cols.iter().any(|c| *c != Col::Pass);
        let masks_columns = cols.iter().any(|c| matches!(c, Col::Masked { .. }));
        Ok(RowPlan {
            cols,
            active,
            masks_columns,
            blind: false,
            withhold: false,
        })
    }

    /// The key under which the plan of (`desc`, `forced`) can be cached:
    /// equal keys give equal plans under the same masks. Trailing `false`
    /// entries of `forced` do not change the key.
    pub fn cache_key(desc: &[u8], forced: &[bool]) -> Vec<u8> {
        let n = forced.iter().rposition(|f| *f).map_or(0, |i| i + 1);
        let mut key = Vec::with_capacity(4 + desc.len() + n.div_ceil(8));
        key.extend_from_slice(&(desc.len() as u32).to_be_bytes());
        key.extend_from_slice(desc);
        for chunk in forced[..n].chunks(8) {
            key.push(
                chunk
                    .iter()
                    .enumerate()
                    .fold(0u8, |b, (i, f)| b | (u8::from(*f) << i)),
            );
        }
        key
    }

    /// The plan for rows that arrive without a known description (should
    /// not happen): a value in which a detector finds something becomes
    /// NULL (its type and format are unknown, so it cannot be rewritten).
    /// Column rules cannot apply without labels: when they may, use
    /// [`RowPlan::withhold_all`] instead.
    pub fn blind(masks: &ActiveMasks) -> RowPlan {
        RowPlan {
            cols: Vec::new(),
            active: !masks.detectors().is_empty(),
            masks_columns: false,
            blind: true,
            withhold: false,
        }
    }

    /// A plan that turns every value into NULL: for rows whose description
    /// is unknown while column rules may apply (which value is which
    /// column cannot be known, so none can be sent).
    pub fn withhold_all() -> RowPlan {
        RowPlan {
            cols: Vec::new(),
            active: true,
            masks_columns: false,
            blind: true,
            withhold: true,
        }
    }

    /// Whether DataRows under this plan need rewriting at all.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Whether a column of this plan is masked whole.
    pub fn masks_columns(&self) -> bool {
        self.masks_columns
    }

    pub fn columns(&self) -> &[Col] {
        &self.cols
    }

    /// Masks one DataRow body. Writes the whole new message (type byte
    /// included) to `out` and returns true when a value changed; false
    /// means the original message can be forwarded as is.
    ///
    /// A DataRow with another number of values than the description is an
    /// error when a column is masked whole (which value is which is
    /// unknown); otherwise its values are treated as [`Col::Blind`].
    pub fn mask_row(
        &self,
        masks: &ActiveMasks,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<bool, CodecError> {
        out.clear();
        if !self.active {
            return Ok(false);
        }
        let mut it = DataRowIter::new(body)?;
        let ncols = it.len();
        let blind = self.blind || ncols != self.cols.len();
        if blind && self.masks_columns {
            return Err(CodecError::malformed(
                "DataRow",
                "number of values differs from its RowDescription, which masks a column",
            ));
        }
        let mut changed = false;
        codec::message(out, b'D', |b| {
            b.extend_from_slice(&(ncols as i16).to_be_bytes());
        });
        let mut i = 0;
        while let Some(value) = it.next()? {
            let col = if blind { Col::Blind } else { self.cols[i] };
            let col = if self.withhold { Col::Withheld } else { col };
            i += 1;
            let Some(v) = value else {
                put_value(out, None);
                continue;
            };
            match mask_value(masks, col, v) {
                Repl::Keep => put_value(out, Some(v)),
                Repl::Null => {
                    changed = true;
                    put_value(out, None);
                }
                Repl::Bytes(new) => {
                    changed = true;
                    put_value(out, Some(&new));
                }
            }
        }
        let len = u32::try_from(out.len() - 1)
            .ok()
            .filter(|l| *l <= i32::MAX as u32)
            .ok_or(CodecError::malformed("DataRow", "too long once masked"))?;
        out[1..5].copy_from_slice(&len.to_be_bytes());
        Ok(changed)
    }
}

fn put_value(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        Some(v) => {
            out.extend_from_slice(&(v.len() as i32).to_be_bytes());
            out.extend_from_slice(v);
        }
    }
}

fn mask_value(masks: &ActiveMasks, col: Col, v: &[u8]) -> Repl {
    match col {
        Col::Pass => Repl::Keep,
        Col::Masked { oid, binary: true } => value::binary(masks, oid, Mode::Whole, v, 0),
        Col::Masked { oid, binary: false } => value::text(masks, oid, Mode::Whole, v, 0),
        Col::Detect { oid, binary: true } => value::binary(masks, oid, Mode::Detect, v, 0),
        Col::Detect { oid, binary: false } => value::text(masks, oid, Mode::Detect, v, 0),
        Col::Blind if value::fires(masks, v) => Repl::Null,
        Col::Blind => Repl::Keep,
        Col::Withheld => Repl::Null,
    }
}

/// Every detector and no column rule (for tests and the fuzz targets).
pub fn all_detectors() -> ActiveMasks {
    ActiveMasks::with_detectors(policy::DetectorSet::all())
}

/// Masks the free-text fields (message, detail, hint, context, internal
/// query) of an ErrorResponse / NoticeResponse. `None`: nothing changed.
pub fn mask_error(
    masks: &ActiveMasks,
    tag: u8,
    body: &[u8],
) -> Result<Option<Vec<u8>>, CodecError> {
    if masks.detectors().is_empty() {
        return Ok(None);
    }
    codec::rewrite_error_fields(tag, body, |code, v| {
        if !matches!(code, b'M' | b'D' | b'H' | b'W' | b'q') {
            return None;
        }
        let s = String::from_utf8_lossy(v);
        match masks.mask_text(&s) {
            std::borrow::Cow::Owned(m) => Some(m.into_bytes()),
            std::borrow::Cow::Borrowed(_) => None,
        }
    })
}

/// Severities the server writes in the non-localized `V` field.
const SEVERITIES: [&str; 9] = [
    "ERROR",
    "FATAL",
    "PANIC",
    "WARNING",
    "NOTICE",
    "DEBUG",
    "INFO",
    "LOG",
    "EXCEPTION",
];

/// Rebuilds an ErrorResponse (`tag` `b'E'`) or NoticeResponse (`b'N'`)
/// without any of the server's text: only the severity (`S` and `V`, from
/// `V` when it is a known severity, else `S` when it is, else ERROR or
/// NOTICE) and the SQLSTATE (`C`, when it is five letters or digits, else
/// XX000) are kept, and the message (`M`) says that the server's message
/// was withheld because `reason`. Detail, hint, context, internal query,
/// positions and object names are dropped: they can quote the values a
/// statement read. Never fails: a body that does not decode gives the
/// default severity and XX000.
pub fn withhold_error(tag: u8, body: &[u8], reason: &str) -> Vec<u8> {
    let fields = codec::error_fields(body).unwrap_or_default();
    let known = |code: u8| {
        codec::error_field(&fields, code)
            .and_then(|v| SEVERITIES.iter().find(|s| **s == v).copied())
    };
    let severity = known(b'V')
        .or_else(|| known(b'S'))
        .unwrap_or(if tag == b'N' { "NOTICE" } else { "ERROR" });
    let code = codec::error_field(&fields, b'C')
        .filter(|c| {
            c.len() == 5
                && c.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        })
        .map(|c| c.into_owned())
        .unwrap_or_else(|| "XX000".to_string());
    let message = format!(
        "interceptor: the server's message was withheld because {reason}; its SQLSTATE {code} is kept"
    );
    let mut out = Vec::with_capacity(64 + message.len());
    codec::message(&mut out, tag, |b| {
        for (k, v) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', code.as_str()),
            (b'M', &message),
        ] {
            b.push(k);
            // A NUL would end the field early.
            b.extend(v.bytes().map(|c| if c == 0 { b' ' } else { c }));
            b.push(0);
        }
        b.push(0);
    });
    out
}

/// Masks the payload of a NotificationResponse body.
pub fn mask_notification(masks: &ActiveMasks, body: &[u8]) -> Result<Option<Vec<u8>>, CodecError> {
    if masks.detectors().is_empty() {
        return Ok(None);
    }
    let mut c = codec::Cursor::new(body, "NotificationResponse");
    let pid = c.i32()?;
    let channel = c.cstr()?;
    let payload = c.cstr()?;
    c.end()?;
    let text = String::from_utf8_lossy(payload);
    let std::borrow::Cow::Owned(masked) = masks.mask_text(&text) else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(body.len() + 16);
    codec::message(&mut out, b'A', |b| {
        b.extend_from_slice(&pid.to_be_bytes());
        b.extend_from_slice(channel);
        b.push(0);
        b.extend_from_slice(masked.as_bytes());
        b.push(0);
    });
    Ok(Some(out))
}

/// Masks one CopyData message of a textual COPY OUT (a row of text or CSV
/// format): detectors only, over the whole row (a replacement contains no
/// delimiter, quote or newline, so the row keeps its columns). Superseded
/// by [`CopyPlan`], which parses the fields, masks columns and keeps the
/// escaping valid; kept until the session uses it.
pub fn mask_copy_row(masks: &ActiveMasks, body: &[u8]) -> Option<Vec<u8>> {
    if masks.detectors().is_empty() {
        return None;
    }
    let s = std::str::from_utf8(body).ok()?;
    let std::borrow::Cow::Owned(masked) = masks.mask_text(s) else {
        return None;
    };
    let mut out = Vec::with_capacity(masked.len() + 5);
    codec::message(&mut out, b'd', |b| b.extend_from_slice(masked.as_bytes()));
    Some(out)
}

#[cfg(test)]
mod tests;
