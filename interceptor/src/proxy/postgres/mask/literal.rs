//! Text-format literals that hold other values: arrays (`{a,"b c",NULL}`,
//! `[0:1]={…}`), records (`(a,"b c",)`), bytea (`\x…`, escape format).
//!
//! The rewriters parse a literal into its leaves, give each non-NULL leaf
//! (unescaped) to a callback, and rebuild the literal: an unchanged leaf is
//! copied as it was, a replaced one is quoted and escaped as the server's
//! own output would be, so the literal stays valid whatever the
//! replacement contains. A literal that does not parse is `None`.

use policy::ActiveMasks;

use super::value::Repl;

/// Deepest `{` nesting of an array literal (the server's MAXDIM).
const MAX_NEST: usize = 6;

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

type Leaf<'a> = dyn FnMut(&[u8]) -> Repl + 'a;

/// Rewrites the elements of an array literal (delimiter `,`).
pub fn rewrite_array(v: &[u8], leaf: &mut Leaf<'_>) -> Option<Vec<u8>> {
    let mut p = ArrayParser {
        v,
        i: 0,
        out: Vec::with_capacity(v.len() + 16),
    };
    if v.first() == Some(&b'[') {
        // Dimension decoration: `[1:2][0:3]=`.
        let eq = v.iter().position(|&b| b == b'=')?;
        if !v[..eq].iter().all(|&b| {
            b.is_ascii_digit() || matches!(b, b'[' | b']' | b':' | b'-' | b'+') || is_space(b)
        }) {
            return None;
        }
        p.out.extend_from_slice(&v[..=eq]);
        p.i = eq + 1;
    }
    p.space();
    p.array(leaf, 1)?;
    p.space();
    (p.i == v.len()).then_some(p.out)
}

struct ArrayParser<'v> {
    v: &'v [u8],
    i: usize,
    out: Vec<u8>,
}

impl ArrayParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.v.get(self.i).copied()
    }

    /// Copies whitespace.
    fn space(&mut self) {
        while let Some(b) = self.peek().filter(|b| is_space(*b)) {
            self.out.push(b);
            self.i += 1;
        }
    }

    /// `{ … }` at `self.i`.
    fn array(&mut self, leaf: &mut Leaf<'_>, nest: usize) -> Option<()> {
        if nest > MAX_NEST || self.peek() != Some(b'{') {
            return None;
        }
        self.out.push(b'{');
        self.i += 1;
        self.space();
        if self.peek() == Some(b'}') {
            self.out.push(b'}');
            self.i += 1;
            return Some(());
        }
        loop {
            self.space();
            if self.peek()? == b'{' {
                self.array(leaf, nest + 1)?;
            } else {
                self.element(leaf)?;
            }
            self.space();
            match self.peek()? {
                b',' => {
                    self.out.push(b',');
                    self.i += 1;
                }
                b'}' => {
                    self.out.push(b'}');
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// One element (quoted or not) at `self.i`; stops before the
    /// whitespace that follows it.
    fn element(&mut self, leaf: &mut Leaf<'_>) -> Option<()> {
        let start = self.i;
        let mut val = Vec::new();
        let mut plain = true;
        if self.peek()? == b'"' {
            plain = false;
            self.i += 1;
            loop {
                match self.peek()? {
                    b'\\' => {
                        val.push(*self.v.get(self.i + 1)?);
                        self.i += 2;
                    }
                    b'"' => {
                        self.i += 1;
                        break;
                    }
                    b => {
                        val.push(b);
                        self.i += 1;
                    }
                }
            }
            if self
                .peek()
                .is_some_and(|b| !is_space(b) && b != b',' && b != b'}')
            {
                return None;
            }
        } else {
            // Unquoted: up to `,` or `}`, trailing whitespace not included
            // (an escaped character counts as content).
            let mut end = self.i;
            let mut val_end = 0;
            while let Some(b) = self.peek() {
                match b {
                    b',' | b'}' => break,
                    b'{' | b'"' => return None,
                    b'\\' => {
                        plain = false;
                        val.push(*self.v.get(self.i + 1)?);
                        self.i += 2;
                        end = self.i;
                        val_end = val.len();
                    }
                    b => {
                        val.push(b);
                        self.i += 1;
                        if !is_space(b) {
                            end = self.i;
                            val_end = val.len();
                        }
                    }
                }
            }
            val.truncate(val_end);
            self.i = end;
            if end == start {
                return None;
            }
        }
        let raw = &self.v[start..self.i];
        if plain && raw.eq_ignore_ascii_case(b"NULL") {
            self.out.extend_from_slice(raw);
            return Some(());
        }
        match leaf(&val) {
            Repl::Keep => self.out.extend_from_slice(raw),
            Repl::Null => self.out.extend_from_slice(b"NULL"),
            Repl::Bytes(b) => array_element(&mut self.out, &b),
        }
        Some(())
    }
}

/// Appends an array element as the server writes it: quoted (with `\"`
/// and `\\`) when it is empty, is `NULL`, or holds `{}",\` or whitespace.
fn array_element(out: &mut Vec<u8>, v: &[u8]) {
    let quote = v.is_empty()
        || v.eq_ignore_ascii_case(b"NULL")
        || v.iter()
            .any(|&b| matches!(b, b'{' | b'}' | b'"' | b',' | b'\\') || is_space(b));
    if !quote {
        out.extend_from_slice(v);
        return;
    }
    out.push(b'"');
    for &b in v {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// Rewrites the fields of a record literal. An empty field is NULL.
pub fn rewrite_record(v: &[u8], leaf: &mut Leaf<'_>) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(v.len() + 16);
    let mut i = 0;
    while v.get(i).is_some_and(|b| is_space(*b)) {
        i += 1;
    }
    out.extend_from_slice(&v[..i]);
    if v.get(i) != Some(&b'(') {
        return None;
    }
    out.push(b'(');
    i += 1;
    loop {
        let start = i;
        let mut val = Vec::new();
        loop {
            match *v.get(i)? {
                b'"' => {
                    i += 1;
                    loop {
                        match *v.get(i)? {
                            b'\\' => {
                                val.push(*v.get(i + 1)?);
                                i += 2;
                            }
                            b'"' if v.get(i + 1) == Some(&b'"') => {
                                val.push(b'"');
                                i += 2;
                            }
                            b'"' => {
                                i += 1;
                                break;
                            }
                            b => {
                                val.push(b);
                                i += 1;
                            }
                        }
                    }
                }
                b'\\' => {
                    val.push(*v.get(i + 1)?);
                    i += 2;
                }
                b',' | b')' => break,
                b => {
                    val.push(b);
                    i += 1;
                }
            }
        }
        let raw = &v[start..i];
        if !raw.is_empty() {
            match leaf(&val) {
                Repl::Keep => out.extend_from_slice(raw),
                Repl::Null => {}
                Repl::Bytes(b) => record_field(&mut out, &b),
            }
        }
        let sep = v[i];
        out.push(sep);
        i += 1;
        if sep == b')' {
            break;
        }
    }
    if !v[i..].iter().all(|b| is_space(*b)) {
        return None;
    }
    out.extend_from_slice(&v[i..]);
    Some(out)
}

/// Appends a record field as the server writes it: quoted (with `""` and
/// `\\`) when it is empty or holds `"\(),` or whitespace.
fn record_field(out: &mut Vec<u8>, v: &[u8]) {
    let quote = v.is_empty()
        || v.iter()
            .any(|&b| matches!(b, b'"' | b'\\' | b'(' | b')' | b',') || is_space(b));
    if !quote {
        out.extend_from_slice(v);
        return;
    }
    out.push(b'"');
    for &b in v {
        if b == b'"' || b == b'\\' {
            out.push(b);
        }
        out.push(b);
    }
    out.push(b'"');
}

/// Characters that may delimit the parts of a literal of a type this code
/// does not know: a detector's replacement never spans one of them.
fn structural(c: char) -> bool {
    matches!(
        c,
        '"' | '\'' | '\\' | '{' | '}' | '(' | ')' | '[' | ']' | ',' | ';'
    )
}

/// The detectors over each run of a literal between [`structural`]
/// characters, so that a replacement cannot swallow a quote or a bracket.
/// (A finding that spans one is not replaced here; the caller's final scan
/// turns such a value into NULL.)
pub fn detect_in_runs(masks: &ActiveMasks, v: &[u8]) -> Vec<u8> {
    let s = String::from_utf8_lossy(v);
    let mut out = String::with_capacity(s.len() + 16);
    let mut run_start = 0;
    for (i, c) in s.char_indices() {
        if structural(c) {
            out.push_str(&masks.mask_text(&s[run_start..i]));
            out.push(c);
            run_start = i + c.len_utf8();
        }
    }
    out.push_str(&masks.mask_text(&s[run_start..]));
    out.into_bytes()
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes a text-format bytea: hex (`\x` then pairs of hex digits,
/// whitespace allowed between pairs) or the escape format (`\\`, `\ooo`,
/// other bytes as they are).
pub fn bytea_decode(v: &[u8]) -> Option<Vec<u8>> {
    if let Some(hex) = v.strip_prefix(b"\\x") {
        let mut out = Vec::with_capacity(hex.len() / 2);
        let mut i = 0;
        while i < hex.len() {
            if is_space(hex[i]) {
                i += 1;
                continue;
            }
            let hi = hex_value(hex[i])?;
            let lo = hex_value(*hex.get(i + 1)?)?;
            out.push(hi << 4 | lo);
            i += 2;
        }
        return Some(out);
    }
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] != b'\\' {
            out.push(v[i]);
            i += 1;
        } else if v.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let d = v.get(i + 1..i + 4)?;
            if !(b'0'..=b'3').contains(&d[0]) || !d[1..].iter().all(|b| (b'0'..=b'7').contains(b)) {
                return None;
            }
            out.push((d[0] - b'0') << 6 | (d[1] - b'0') << 3 | (d[2] - b'0'));
            i += 4;
        }
    }
    Some(out)
}

/// A bytea in the hex text format.
pub fn bytea_hex(v: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(2 + v.len() * 2);
    out.extend_from_slice(b"\\x");
    for &b in v {
        out.push(HEX[(b >> 4) as usize]);
        out.push(HEX[(b & 15) as usize]);
    }
    out
}
