//! Masking of result values (DataRow), server texts (ErrorResponse,
//! NoticeResponse, NotificationResponse) and textual COPY OUT data.
//!
//! A [`RowPlan`] is built once per RowDescription: for each column, whether
//! its name is masked and how its values are encoded. Then each DataRow is
//! rewritten value by value, with correct lengths; the RowDescription
//! itself never changes, so every replacement is a valid value of the
//! column's type:
//!
//! | column type and format | masked column | detectors |
//! |---|---|---|
//! | string types (text, varchar, char, name, unknown, xml), text or binary | `****` | yes |
//! | json / jsonb (text; jsonb binary) | `"****"` (a JSON string) | yes |
//! | numbers (int2/4/8, oid, numeric, float4/8, money), text | `0` | no |
//! | the same numbers, binary | zero of the type (`0`, `0.0`) | no |
//! | other types, text (arrays, records, enums, hstore, extension types) | NULL | yes |
//! | types with no free text (bool, bytea, dates and times, uuid, network, bit strings, geometry), text | NULL | no |
//! | any other type, binary | NULL | no |

use policy::{ActiveMasks, CellKind};

use super::codec::{self, CodecError, DataRowIter};

/// How one column's values are masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Col {
    /// Left alone.
    Pass,
    /// A string value (UTF-8 bytes in text and binary format).
    Text { masked: bool, json: bool },
    /// jsonb in binary format: a version byte, then JSON text.
    JsonbBinary { masked: bool },
    /// A number in text format whose column is masked: `0`.
    NumberZero,
    /// A number in binary format whose column is masked: `len` zero bytes.
    BinaryZero { len: u8 },
    /// A column that is masked but has no safe stand-in: NULL.
    Null,
    /// Another type in text format: detectors only.
    Detect,
}

/// The masking plan of one result description.
#[derive(Debug, Clone, Default)]
pub struct RowPlan {
    cols: Vec<Col>,
    /// Whether any value needs looking at.
    active: bool,
    /// Whether a DataRow can arrive without a description (then every
    /// UTF-8 value goes through the detectors).
    blind: bool,
}

// Type OIDs (pg_type.h).
const BOOL: u32 = 16;
const BYTEA: u32 = 17;
const CHAR: u32 = 18;
const NAME: u32 = 19;
const INT8: u32 = 20;
const INT2: u32 = 21;
const INT4: u32 = 23;
const TEXT: u32 = 25;
const OID: u32 = 26;
const JSON: u32 = 114;
const XML: u32 = 142;
const FLOAT4: u32 = 700;
const FLOAT8: u32 = 701;
const UNKNOWN: u32 = 705;
const MONEY: u32 = 790;
const BPCHAR: u32 = 1042;
const VARCHAR: u32 = 1043;
const NUMERIC: u32 = 1700;
const JSONB: u32 = 3802;

enum Class {
    Text {
        json: bool,
    },
    Jsonb,
    Number {
        binary_len: u8,
    },
    /// No free text can hide in these.
    Opaque,
    Other,
}

fn class(oid: u32) -> Class {
    match oid {
        TEXT | VARCHAR | BPCHAR | NAME | CHAR | XML | UNKNOWN => Class::Text { json: false },
        JSON => Class::Text { json: true },
        JSONB => Class::Jsonb,
        INT2 => Class::Number { binary_len: 2 },
        INT4 | OID | FLOAT4 => Class::Number { binary_len: 4 },
        INT8 | FLOAT8 | MONEY => Class::Number { binary_len: 8 },
        // Binary numeric zero: ndigits 0, weight 0, sign +, dscale 0.
        NUMERIC => Class::Number { binary_len: 8 },
        BOOL | BYTEA
        // date, time, timestamp, timestamptz, interval, timetz
        | 1082 | 1083 | 1114 | 1184 | 1186 | 1266
        // uuid, inet, cidr, macaddr, macaddr8
        | 2950 | 869 | 650 | 829 | 774
        // bit, varbit, point, lseg, path, box, polygon, line, circle
        | 1560 | 1562 | 600 | 601 | 602 | 603 | 604 | 628 | 718
        // pg_lsn, xid, xid8, tid, cid, regclass, regtype, regproc
        | 3220 | 28 | 5069 | 27 | 29 | 2205 | 2206 | 24 => Class::Opaque,
        _ => Class::Other,
    }
}

impl RowPlan {
    /// The plan for a RowDescription body under `masks`.
    pub fn new(body: &[u8], masks: &ActiveMasks) -> Result<RowPlan, CodecError> {
        let fields = codec::row_description(body)?;
        let detect = !masks.detectors().is_empty();
        let mut cols = Vec::with_capacity(fields.len());
        for f in &fields {
            let masked = masks.column_masked(&String::from_utf8_lossy(f.name));
            let binary = f.format == 1;
            let col = match class(f.type_oid) {
                Class::Text { json } if masked || detect => Col::Text { masked, json },
                Class::Jsonb if binary && (masked || detect) => Col::JsonbBinary { masked },
                Class::Jsonb if masked || detect => Col::Text { masked, json: true },
                Class::Number { binary_len } if masked => {
                    if binary {
                        Col::BinaryZero { len: binary_len }
                    } else {
                        Col::NumberZero
                    }
                }
                Class::Opaque if masked => Col::Null,
                Class::Other if masked => Col::Null,
                Class::Other if detect && !binary => Col::Detect,
                _ => Col::Pass,
            };
            cols.push(col);
        }
        let active = cols.iter().any(|c| *c != Col::Pass);
        Ok(RowPlan {
            cols,
            active,
            blind: false,
        })
    }

    /// The plan for rows that arrive without a known description (should
    /// not happen): detectors over every UTF-8 value.
    pub fn blind(masks: &ActiveMasks) -> RowPlan {
        RowPlan {
            cols: Vec::new(),
            active: !masks.detectors().is_empty(),
            blind: true,
        }
    }

    /// Whether DataRows under this plan need rewriting at all.
    pub fn is_active(&self) -> bool {
        self.active
    }

    pub fn columns(&self) -> &[Col] {
        &self.cols
    }

    /// Masks one DataRow body. Writes the whole new message (type byte
    /// included) to `out` and returns true when a value changed; false
    /// means the original message can be forwarded as is.
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
        let fallback = if self.blind || ncols != self.cols.len() {
            Col::Detect
        } else {
            Col::Pass
        };
        let mut changed = false;
        codec::message(out, b'D', |b| {
            b.extend_from_slice(&(ncols as i16).to_be_bytes());
        });
        let mut i = 0;
        while let Some(value) = it.next()? {
            let col = if fallback == Col::Detect {
                Col::Detect
            } else {
                self.cols[i]
            };
            i += 1;
            let Some(v) = value else {
                out.extend_from_slice(&(-1i32).to_be_bytes());
                continue;
            };
            match mask_value(masks, col, v) {
                Replacement::Keep => put_value(out, Some(v)),
                Replacement::Null => {
                    changed = true;
                    put_value(out, None);
                }
                Replacement::Bytes(new) => {
                    changed = true;
                    put_value(out, Some(&new));
                }
                Replacement::Zeros(n) => {
                    changed = true;
                    put_value(out, Some(&[0u8; 8][..n as usize]));
                }
            }
        }
        let len = (out.len() - 1) as u32;
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

enum Replacement {
    Keep,
    Null,
    Bytes(Vec<u8>),
    Zeros(u8),
}

const MASKED_JSON: &str = "\"****\"";

fn mask_value(masks: &ActiveMasks, col: Col, v: &[u8]) -> Replacement {
    match col {
        Col::Pass => Replacement::Keep,
        Col::Null => Replacement::Null,
        Col::NumberZero => Replacement::Bytes(policy::mask::MASKED_NUMBER.as_bytes().to_vec()),
        Col::BinaryZero { len } => Replacement::Zeros(len),
        Col::Text { masked: true, json } => Replacement::Bytes(
            if json {
                MASKED_JSON
            } else {
                policy::mask::MASKED_TEXT
            }
            .as_bytes()
            .to_vec(),
        ),
        Col::JsonbBinary { masked: true } => {
            let mut b = vec![1u8];
            b.extend_from_slice(MASKED_JSON.as_bytes());
            Replacement::Bytes(b)
        }
        Col::Text { masked: false, .. } | Col::Detect => detect(masks, v, &[]),
        Col::JsonbBinary { masked: false } => match v.split_first() {
            Some((&1, text)) => detect(masks, text, &[1]),
            // An unknown jsonb version: cannot be read, so not changed.
            _ => Replacement::Keep,
        },
    }
}

/// Runs the detectors over a value; `prefix` is kept in front of a
/// replacement.
fn detect(masks: &ActiveMasks, v: &[u8], prefix: &[u8]) -> Replacement {
    let masked = match std::str::from_utf8(v) {
        Ok(s) => masks.mask_cell(false, CellKind::Text, s),
        // Not UTF-8 (another client encoding): look at it lossily; only a
        // value where a detector fires is rewritten.
        Err(_) => masks.mask_cell(false, CellKind::Text, &String::from_utf8_lossy(v)),
    };
    match masked {
        None => Replacement::Keep,
        Some(s) => {
            let mut b = Vec::with_capacity(prefix.len() + s.len());
            b.extend_from_slice(prefix);
            b.extend_from_slice(s.as_bytes());
            Replacement::Bytes(b)
        }
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
/// delimiter, quote or newline, so the row keeps its columns).
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
mod tests {
    use super::*;
    use policy::Policy;

    fn masks() -> ActiveMasks {
        let p = Policy::parse(
            "[[mask]]\ndetectors = [\"credit_card\", \"email\"]\ncolumns = [\"password*\", \"ssn\", \"meta\", \"amount\", \"born\"]\n",
            "policy.toml",
        )
        .unwrap();
        let w = policy::Workload::default();
        let t = policy::Target {
            protocol: policy::Protocol::Postgres,
            addr: "127.0.0.1".parse().unwrap(),
            port: 5432,
            host: None,
            database: None,
            user: None,
        };
        p.masker().for_context(&w, &t)
    }

    fn row_desc(fields: &[(&str, u32, i16)]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(fields.len() as i16).to_be_bytes());
        for (name, oid, fmt) in fields {
            b.extend_from_slice(name.as_bytes());
            b.push(0);
            b.extend_from_slice(&0i32.to_be_bytes());
            b.extend_from_slice(&0i16.to_be_bytes());
            b.extend_from_slice(&oid.to_be_bytes());
            b.extend_from_slice(&(-1i16).to_be_bytes());
            b.extend_from_slice(&(-1i32).to_be_bytes());
            b.extend_from_slice(&fmt.to_be_bytes());
        }
        b
    }

    fn data_row(values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for v in values {
            put_value(&mut b, *v);
        }
        b
    }

    fn values(msg: &[u8]) -> Vec<Option<Vec<u8>>> {
        let (f, n) = codec::split_frame(msg, 1 << 20).unwrap().unwrap();
        assert_eq!(n, msg.len(), "length field matches");
        let mut it = DataRowIter::new(f.body).unwrap();
        let mut out = Vec::new();
        while let Some(v) = it.next().unwrap() {
            out.push(v.map(<[u8]>::to_vec));
        }
        out
    }

    #[test]
    fn masks_by_column_and_detector_keeping_types() {
        let m = masks();
        let desc = row_desc(&[
            ("id", 23, 0),
            ("card", 25, 0),
            ("password_hash", 1043, 0),
            ("ssn", 23, 1),
            ("meta", 3802, 0),
            ("amount", 1700, 0),
            ("born", 1082, 0),
            ("note", 1009, 0),
        ]);
        let plan = RowPlan::new(&desc, &m).unwrap();
        assert_eq!(plan.columns()[0], Col::Pass);
        let row = data_row(&[
            Some(b"7"),
            Some(b"paid 4111111111111111 ok"),
            Some(b"hunter2"),
            Some(&[0, 0, 0x30, 0x39]),
            Some(br#"{"a":1}"#),
            Some(b"12.50"),
            Some(b"1990-01-01"),
            Some(b"{bob@example.com}"),
        ]);
        let mut out = Vec::new();
        assert!(plan.mask_row(&m, &row, &mut out).unwrap());
        let v = values(&out);
        assert_eq!(v[0].as_deref(), Some(&b"7"[..]));
        assert_eq!(v[1].as_deref(), Some(&b"paid <masked:credit_card> ok"[..]));
        assert_eq!(v[2].as_deref(), Some(&b"****"[..]));
        assert_eq!(
            v[3].as_deref(),
            Some(&[0u8, 0, 0, 0][..]),
            "binary int4 zero"
        );
        assert_eq!(v[4].as_deref(), Some(&b"\"****\""[..]), "json stays json");
        assert_eq!(v[5].as_deref(), Some(&b"0"[..]));
        assert_eq!(v[6], None, "a masked date becomes NULL");
        assert_eq!(v[7].as_deref(), Some(&b"{<masked:email>}"[..]));
    }

    #[test]
    fn untouched_rows_are_not_rewritten() {
        let m = masks();
        let plan = RowPlan::new(&row_desc(&[("id", 23, 0), ("name", 25, 0)]), &m).unwrap();
        let mut out = Vec::new();
        let row = data_row(&[Some(b"1"), Some(b"alice")]);
        assert!(!plan.mask_row(&m, &row, &mut out).unwrap());
        // No masks at all: the plan is inactive.
        let none = ActiveMasks::default();
        let plan = RowPlan::new(&row_desc(&[("password", 25, 0)]), &none).unwrap();
        assert!(!plan.is_active());
    }

    #[test]
    fn binary_text_and_jsonb_are_masked_binary_numbers_never_detected() {
        let m = masks();
        let desc = row_desc(&[("c", 25, 1), ("j", 3802, 1), ("n", 20, 1)]);
        let plan = RowPlan::new(&desc, &m).unwrap();
        let mut jb = vec![1u8];
        jb.extend_from_slice(br#"{"e":"bob@example.com"}"#);
        let row = data_row(&[
            Some(b"4111 1111 1111 1111"),
            Some(&jb),
            Some(&4111111111111111i64.to_be_bytes()),
        ]);
        let mut out = Vec::new();
        assert!(plan.mask_row(&m, &row, &mut out).unwrap());
        let v = values(&out);
        assert_eq!(v[0].as_deref(), Some(&b"<masked:credit_card>"[..]));
        assert_eq!(
            v[1].as_deref(),
            Some(&b"\x01{\"e\":\"<masked:email>\"}"[..])
        );
        assert_eq!(
            v[2].as_deref(),
            Some(&4111111111111111i64.to_be_bytes()[..])
        );
    }

    #[test]
    fn malformed_rows_are_errors_and_column_mismatch_falls_back_to_detectors() {
        let m = masks();
        let plan = RowPlan::new(&row_desc(&[("a", 25, 0)]), &m).unwrap();
        let mut out = Vec::new();
        assert!(
            plan.mask_row(&m, &[0, 1, 0, 0, 0, 5, b'x'], &mut out)
                .is_err()
        );
        assert!(plan.mask_row(&m, &[0xff, 0xff], &mut out).is_err());
        let row = data_row(&[Some(b"x"), Some(b"bob@example.com")]);
        assert!(plan.mask_row(&m, &row, &mut out).unwrap());
        assert_eq!(values(&out)[1].as_deref(), Some(&b"<masked:email>"[..]));
        assert!(RowPlan::new(&[0, 1, b'a'], &m).is_err());
    }

    #[test]
    fn server_texts_and_copy_rows_are_masked() {
        let m = masks();
        let e = codec::error_response("ERROR", "23505", "duplicate key: card 4111111111111111");
        let (f, _) = codec::split_frame(&e, 1 << 20).unwrap().unwrap();
        let new = mask_error(&m, b'E', f.body).unwrap().unwrap();
        let (f, _) = codec::split_frame(&new, 1 << 20).unwrap().unwrap();
        let fields = codec::error_fields(f.body).unwrap();
        assert_eq!(
            codec::error_field(&fields, b'M').as_deref(),
            Some("duplicate key: card <masked:credit_card>")
        );
        assert_eq!(codec::error_field(&fields, b'C').as_deref(), Some("23505"));
        let row = mask_copy_row(&m, b"1\tbob@example.com\t4111111111111111\n").unwrap();
        let (f, _) = codec::split_frame(&row, 1 << 20).unwrap().unwrap();
        assert_eq!(f.body, b"1\t<masked:email>\t<masked:credit_card>\n");
        assert!(mask_copy_row(&m, b"1\tnothing\n").is_none());
    }
}
