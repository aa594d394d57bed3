//! Masking of one value of a known type in a known format.
//!
//! Every function here returns a [`Repl`] that is a valid value of the
//! type in its format, or NULL. The invariant of the module: a value whose
//! column is masked whole never leaves unchanged (unless it is NULL), and a
//! value in which an active detector finds something never leaves with
//! that finding in it — every rewritten value is scanned again, and a
//! value that still shows a finding becomes NULL.

use std::borrow::Cow;

use policy::ActiveMasks;

use super::types::{Class, class};
use super::{binary, literal};

/// How a value is masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The value's column is masked: the whole value is replaced.
    Whole,
    /// Only the detectors apply.
    Detect,
}

/// What a value becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repl {
    /// Unchanged.
    Keep,
    /// SQL NULL.
    Null,
    /// These bytes.
    Bytes(Vec<u8>),
}

/// How deep arrays and records may nest inside one another before a value
/// that needs masking is replaced with NULL instead of decoded further.
pub const MAX_DEPTH: u8 = 8;

/// What a column-masked string becomes.
pub const MASKED_TEXT: &[u8] = policy::mask::MASKED_TEXT.as_bytes();
/// What a column-masked json value becomes (a JSON string).
pub const MASKED_JSON: &[u8] = b"\"****\"";
/// What a column-masked number in text format becomes.
pub const MASKED_NUMBER: &[u8] = policy::mask::MASKED_NUMBER.as_bytes();

/// Whether an active detector finds something in the bytes (read as
/// UTF-8, invalid sequences replaced).
pub fn fires(masks: &ActiveMasks, v: &[u8]) -> bool {
    !masks.detectors().is_empty()
        && !masks
            .detectors_fired(&String::from_utf8_lossy(v))
            .is_empty()
}

/// The detectors over a string value: the masked bytes, or `None` when
/// nothing was found.
pub fn detect_text(masks: &ActiveMasks, v: &[u8]) -> Option<Vec<u8>> {
    let s = String::from_utf8_lossy(v);
    match masks.mask_text(&s) {
        Cow::Owned(m) => Some(m.into_bytes()),
        Cow::Borrowed(_) => None,
    }
}

fn masked_string(json: bool, one_byte: bool) -> Vec<u8> {
    if one_byte {
        b"*".to_vec()
    } else if json {
        MASKED_JSON.to_vec()
    } else {
        MASKED_TEXT.to_vec()
    }
}

/// Applies the final check of the Detect mode: a rewritten value in which a
/// detector still finds something becomes NULL.
fn checked(masks: &ActiveMasks, mode: Mode, r: Repl) -> Repl {
    match r {
        Repl::Bytes(b) if mode == Mode::Detect && fires(masks, &b) => Repl::Null,
        r => r,
    }
}

/// Masks a binary-format value of type `oid`.
pub fn binary(masks: &ActiveMasks, oid: u32, mode: Mode, v: &[u8], depth: u8) -> Repl {
    let r = match (class(oid), mode) {
        (Class::Text { json, one_byte }, Mode::Whole) => Repl::Bytes(masked_string(json, one_byte)),
        (Class::Text { .. } | Class::Bytea, Mode::Detect) => {
            detect_text(masks, v).map_or(Repl::Keep, Repl::Bytes)
        }
        (Class::Jsonb, Mode::Whole) => {
            let mut b = vec![1u8];
            b.extend_from_slice(MASKED_JSON);
            Repl::Bytes(b)
        }
        (Class::Jsonb, Mode::Detect) => match v.split_first() {
            Some((&1, text)) => match detect_text(masks, text) {
                Some(m) => {
                    let mut b = Vec::with_capacity(m.len() + 1);
                    b.push(1);
                    b.extend_from_slice(&m);
                    Repl::Bytes(b)
                }
                None => Repl::Keep,
            },
            // Another jsonb version: cannot be rewritten.
            _ if fires(masks, v) => Repl::Null,
            _ => Repl::Keep,
        },
        (Class::Number { binary_len }, Mode::Whole) => Repl::Bytes(vec![0u8; binary_len as usize]),
        (Class::Number { .. } | Class::Opaque, Mode::Detect) => Repl::Keep,
        (Class::Opaque | Class::Bytea | Class::Unknown, Mode::Whole) => Repl::Null,
        (Class::Array { .. }, _) => structured(masks, mode, v, depth, |m, v, d| {
            binary::mask_array(masks, m, v, d)
        }),
        (Class::Record, _) => structured(masks, mode, v, depth, |m, v, d| {
            binary::mask_record(masks, m, v, d)
        }),
        (Class::Unknown, Mode::Detect) => structured(masks, mode, v, depth, |m, v, d| {
            binary::mask_array(masks, m, v, d).or_else(|| binary::mask_record(masks, m, v, d))
        }),
    };
    checked(masks, mode, r)
}

/// Masks a value through a structured decoder (`None`: it does not decode).
/// In the Detect mode a value in which no detector fires is kept without
/// decoding it.
fn structured(
    masks: &ActiveMasks,
    mode: Mode,
    v: &[u8],
    depth: u8,
    decode: impl FnOnce(Mode, &[u8], u8) -> Option<Vec<u8>>,
) -> Repl {
    if mode == Mode::Detect && !fires(masks, v) {
        return Repl::Keep;
    }
    if depth >= MAX_DEPTH {
        return Repl::Null;
    }
    match decode(mode, v, depth + 1) {
        // Whole: nothing to replace (every element NULL, say). Detect
        // keeps the rewritten bytes even when equal, so that `checked`
        // turns a value that still fires into NULL.
        Some(b) if mode == Mode::Whole && b == v => Repl::Keep,
        Some(b) => Repl::Bytes(b),
        None => Repl::Null,
    }
}

/// Masks a text-format value of type `oid`.
pub fn text(masks: &ActiveMasks, oid: u32, mode: Mode, v: &[u8], depth: u8) -> Repl {
    let r = match (class(oid), mode) {
        (Class::Text { json, one_byte }, Mode::Whole) => Repl::Bytes(masked_string(json, one_byte)),
        (Class::Jsonb, Mode::Whole) => Repl::Bytes(MASKED_JSON.to_vec()),
        (Class::Text { .. } | Class::Jsonb, Mode::Detect) => {
            detect_text(masks, v).map_or(Repl::Keep, Repl::Bytes)
        }
        (Class::Number { .. }, Mode::Whole) => Repl::Bytes(MASKED_NUMBER.to_vec()),
        (Class::Number { .. } | Class::Opaque, Mode::Detect) => Repl::Keep,
        (Class::Opaque | Class::Bytea | Class::Record | Class::Unknown, Mode::Whole) => Repl::Null,
        // Checked on the decoded bytes, not on the hex text.
        (Class::Bytea, Mode::Detect) => return bytea_text(masks, v),
        (Class::Array { elem }, _) => match class(elem) {
            c if mode == Mode::Detect && !c.may_hold_text() => Repl::Keep,
            // bytea elements are looked at decoded: no scan of the literal
            // first (its hex hides what they hold).
            Class::Bytea => structured(masks, Mode::Whole, v, depth, |_, v, d| {
                literal::rewrite_array(v, &mut |leaf| text(masks, elem, mode, leaf, d))
            }),
            _ => structured(masks, mode, v, depth, |m, v, d| {
                literal::rewrite_array(v, &mut |leaf| text(masks, elem, m, leaf, d))
            }),
        },
        (Class::Record, Mode::Detect) => structured(masks, mode, v, depth, |m, v, d| {
            literal::rewrite_record(v, &mut |leaf| text(masks, 0, m, leaf, d))
        }),
        (Class::Unknown, Mode::Detect) => structured(masks, mode, v, depth, |m, v, d| {
            let mut leaf = |leaf: &[u8]| text(masks, 0, m, leaf, d);
            let structured = match v.first() {
                Some(b'{' | b'[') => literal::rewrite_array(v, &mut leaf),
                Some(b'(') => literal::rewrite_record(v, &mut leaf),
                _ => None,
            };
            Some(structured.unwrap_or_else(|| {
                if d > 1 {
                    // An element or field of a literal: it is quoted anew
                    // by the rewriter, so any replacement keeps the outer
                    // literal valid.
                    detect_text(masks, v).unwrap_or_else(|| v.to_vec())
                } else {
                    literal::detect_in_runs(masks, v)
                }
            }))
        }),
    };
    checked(masks, mode, r)
}

/// bytea in text format: `\x` and hex digits, or the escape format. The
/// detectors look at the decoded bytes; a rewritten value is sent in hex.
fn bytea_text(masks: &ActiveMasks, v: &[u8]) -> Repl {
    match literal::bytea_decode(v) {
        Some(raw) => match detect_text(masks, &raw) {
            Some(m) if fires(masks, &m) => Repl::Null,
            Some(m) => Repl::Bytes(literal::bytea_hex(&m)),
            None => Repl::Keep,
        },
        None if fires(masks, v) => Repl::Null,
        None => Repl::Keep,
    }
}
