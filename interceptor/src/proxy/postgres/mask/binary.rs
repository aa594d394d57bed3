//! The binary formats of arrays (`array_send`) and records
//! (`record_send`), rewritten element by element.
//!
//! Both decoders read only what is there: every announced count and length
//! is checked against the bytes left before it is used, nothing is
//! allocated by an announced size, and any inconsistency (a count past the
//! end, a length below -1, trailing bytes) makes the value undecodable
//! (`None`), which the caller turns into NULL.

use policy::ActiveMasks;

use super::super::codec::Cursor;
use super::value::{self, Mode, Repl};

/// Most dimensions of an array (the server's MAXDIM).
const MAX_DIMS: i32 = 6;

fn put_elem(out: &mut Vec<u8>, v: Option<&[u8]>) -> Option<()> {
    match v {
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        Some(v) => {
            out.extend_from_slice(&i32::try_from(v.len()).ok()?.to_be_bytes());
            out.extend_from_slice(v);
        }
    }
    Some(())
}

/// Masks the elements of a binary array by the element type it names:
/// `ndim`, has-null flag, element OID, `ndim` × (size, lower bound), then
/// the elements as length (-1: NULL) and bytes. The header (dimensions,
/// element OID) is kept; the has-null flag is set when an element became
/// NULL.
pub fn mask_array(masks: &ActiveMasks, mode: Mode, v: &[u8], depth: u8) -> Option<Vec<u8>> {
    let mut c = Cursor::new(v, "array");
    let ndim = c.i32().ok()?;
    if !(0..=MAX_DIMS).contains(&ndim) {
        return None;
    }
    let flags = c.i32().ok()?;
    if flags != 0 && flags != 1 {
        return None;
    }
    let elem = c.i32().ok()? as u32;
    let mut items: usize = if ndim == 0 { 0 } else { 1 };
    for _ in 0..ndim {
        let size = c.i32().ok()?;
        let _lower = c.i32().ok()?;
        if size < 0 {
            return None;
        }
        items = items.checked_mul(size as usize)?;
    }
    // Every element takes at least its 4-byte length.
    if items > c.remaining().len() / 4 {
        return None;
    }
    let header = v.len() - c.remaining().len();
    let mut out = Vec::with_capacity(v.len());
    out.extend_from_slice(&v[..header]);
    let mut nulls = false;
    for _ in 0..items {
        let len = c.i32().ok()?;
        if len == -1 {
            nulls = true;
            put_elem(&mut out, None)?;
            continue;
        }
        if len < 0 {
            return None;
        }
        let e = c.bytes(len as usize).ok()?;
        match value::binary(masks, elem, mode, e, depth) {
            Repl::Keep => put_elem(&mut out, Some(e))?,
            Repl::Null => {
                nulls = true;
                put_elem(&mut out, None)?;
            }
            Repl::Bytes(b) => put_elem(&mut out, Some(&b))?,
        }
    }
    if !c.is_empty() {
        return None;
    }
    if nulls {
        out[4..8].copy_from_slice(&1i32.to_be_bytes());
    }
    Some(out)
}

/// Masks the fields of a binary record by the type each names: a field
/// count, then per field its type OID, length (-1: NULL) and bytes. The
/// count and the OIDs are kept.
pub fn mask_record(masks: &ActiveMasks, mode: Mode, v: &[u8], depth: u8) -> Option<Vec<u8>> {
    let mut c = Cursor::new(v, "record");
    let n = c.i32().ok()?;
    // Every field takes at least its OID and its length.
    if n < 0 || n as usize > c.remaining().len() / 8 {
        return None;
    }
    let mut out = Vec::with_capacity(v.len());
    out.extend_from_slice(&n.to_be_bytes());
    for _ in 0..n {
        let oid = c.i32().ok()? as u32;
        out.extend_from_slice(&oid.to_be_bytes());
        let len = c.i32().ok()?;
        if len == -1 {
            put_elem(&mut out, None)?;
            continue;
        }
        if len < 0 {
            return None;
        }
        let f = c.bytes(len as usize).ok()?;
        match value::binary(masks, oid, mode, f, depth) {
            Repl::Keep => put_elem(&mut out, Some(f))?,
            Repl::Null => put_elem(&mut out, None)?,
            Repl::Bytes(b) => put_elem(&mut out, Some(&b))?,
        }
    }
    if !c.is_empty() {
        return None;
    }
    Some(out)
}
