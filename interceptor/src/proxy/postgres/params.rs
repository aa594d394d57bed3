//! Bind parameters as recorded with each execution and shown to
//! approvers: masked by the session's detectors, long values cut.

use policy::ActiveMasks;
use serde_json::{Value, json};

use super::codec;

/// Longest parameter text kept in a record.
const MAX_TEXT: usize = 1024;

// Type OIDs of parameters decoded from the binary format.
const BOOL: u32 = 16;
const INT8: u32 = 20;
const INT2: u32 = 21;
const INT4: u32 = 23;
const TEXT: u32 = 25;
const VARCHAR: u32 = 1043;
const BPCHAR: u32 = 1042;
const NAME: u32 = 19;
const JSON: u32 = 114;

/// A Parse's declared parameter types (0 = unspecified).
pub fn types(raw: &[u8]) -> Vec<u32> {
    raw.chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The parameters of a Bind (`args` as [`codec::Frontend::Bind`] carries
/// them) for the record: text values through the detectors and cut at
/// 1 KiB, binary values decoded where their declared type is simple,
/// otherwise their size. `None` when there are none.
pub fn json(args: &[u8], types: &[u32], masks: &ActiveMasks) -> Option<Value> {
    let values = match codec::bind_values(args) {
        Ok(v) => v,
        Err(e) => return Some(json!(format!("<undecodable parameters: {e}>"))),
    };
    if values.is_empty() {
        return None;
    }
    let out: Vec<Value> = values
        .iter()
        .enumerate()
        .map(|(i, (fmt, v))| {
            let Some(v) = v else {
                return Value::Null;
            };
            let ty = types.get(i).copied().unwrap_or(0);
            if *fmt == 0 {
                return text(v, masks);
            }
            match (ty, v.len()) {
                (INT2, 2) => json!(i16::from_be_bytes([v[0], v[1]])),
                (INT4, 4) => json!(i32::from_be_bytes([v[0], v[1], v[2], v[3]])),
                (INT8, 8) => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(v);
                    json!(i64::from_be_bytes(b))
                }
                (BOOL, 1) => json!(v[0] != 0),
                (TEXT | VARCHAR | BPCHAR | NAME | JSON, _) => text(v, masks),
                (_, n) => json!(format!("<{n} bytes, binary>")),
            }
        })
        .collect();
    Some(Value::Array(out))
}

fn text(v: &[u8], masks: &ActiveMasks) -> Value {
    let s = String::from_utf8_lossy(v);
    let masked = masks.mask_text(&s);
    if masked.len() > MAX_TEXT {
        let mut cut = MAX_TEXT;
        while !masked.is_char_boundary(cut) {
            cut -= 1;
        }
        return json!(format!("{}… <{} bytes>", &masked[..cut], v.len()));
    }
    json!(masked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::DetectorSet;

    fn args(values: &[(i16, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for (f, _) in values {
            b.extend_from_slice(&f.to_be_bytes());
        }
        b.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for (_, v) in values {
            match v {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
            }
        }
        b.extend_from_slice(&0i16.to_be_bytes());
        b
    }

    #[test]
    fn parameters_are_decoded_and_masked() {
        let masks = ActiveMasks::with_detectors(DetectorSet::all());
        let a = args(&[
            (0, Some(b"bob@example.com")),
            (1, Some(&7i32.to_be_bytes())),
            (0, None),
            (1, Some(b"\x01\x02\x03")),
        ]);
        let v = json(&a, &[0, INT4, 0, 0], &masks).unwrap();
        assert_eq!(v, json!(["<masked:email>", 7, null, "<3 bytes, binary>"]));
        assert!(json(&args(&[]), &[], &masks).is_none());
        let long = vec![b'x'; 5000];
        let v = json(&args(&[(0, Some(&long))]), &[], &masks).unwrap();
        assert!(v[0].as_str().unwrap().ends_with("<5000 bytes>"));
    }
}
