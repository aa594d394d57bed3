//! PostgreSQL's lexical rules (`src/backend/parser/scan.l`) for what
//! decides structure: whitespace, `--` and nested `/* */` comments, string
//! literals (`'…'` as `standard_conforming_strings` says, `E'…'`, `N'…'`,
//! `B'…'`, `X'…'`, and their continuation across a newline), dollar quotes,
//! quoted identifiers, identifiers (which may contain `$`), parameters,
//! numbers and operators (which stop where a comment starts).
//!
//! `U&'…'` and `U&"…"` (Unicode escapes) are refused: rare, and their
//! escape character can be changed after the literal (`UESCAPE`).

use super::{LexError, StrKind, Tok, Token};

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0c | 0x0b)
}

fn is_newline(b: u8) -> bool {
    matches!(b, b'\n' | b'\r')
}

fn ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn ident_cont(b: u8) -> bool {
    ident_start(b) || b.is_ascii_digit() || b == b'$'
}

fn op_char(b: u8) -> bool {
    b"~!@#^&|`?+-*/%<>=".contains(&b)
}

/// Which scanner state a quoted string is in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quoted {
    /// Standard: only `''` escapes.
    Standard,
    /// Extended: backslash escapes and `''`.
    Extended,
    /// Bit / hex strings: no escapes at all.
    Bits,
}

pub(super) fn lex(text: &str, backslash_escapes: bool) -> Result<Vec<Token>, LexError> {
    let mut at = 0;
    lex_from(text, backslash_escapes, &mut at).map_err(|e| e.at(at))
}

fn lex_from(text: &str, backslash_escapes: bool, at: &mut usize) -> Result<Vec<Token>, LexError> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let tok = |out: &mut Vec<Token>, tok: Tok, start: usize, end: usize| {
        out.push(Token {
            tok,
            range: start..end,
        })
    };
    while i < b.len() {
        let c = b[i];
        let start = i;
        *at = i;
        let next = b.get(i + 1).copied();
        if c == 0 {
            return Err(LexError::new("a NUL byte in the query"));
        }
        if is_space(c) {
            while i < b.len() && is_space(b[i]) {
                i += 1;
            }
            tok(&mut out, Tok::Space, start, i);
        } else if c == b'-' && next == Some(b'-') {
            i = line_comment_end(b, i);
            tok(&mut out, Tok::Comment, start, i);
        } else if c == b'/' && next == Some(b'*') {
            i = block_comment_end(b, i)?;
            tok(&mut out, Tok::Comment, start, i);
        } else if c == b'\'' {
            let mode = if backslash_escapes {
                Quoted::Extended
            } else {
                Quoted::Standard
            };
            let (value, end) = string(text, i, mode)?;
            i = end;
            tok(
                &mut out,
                Tok::Str {
                    value,
                    kind: StrKind::Plain,
                },
                start,
                i,
            );
        } else if matches!(c, b'e' | b'E') && next == Some(b'\'') {
            let (value, end) = string(text, i + 1, Quoted::Extended)?;
            i = end;
            tok(
                &mut out,
                Tok::Str {
                    value,
                    kind: StrKind::Plain,
                },
                start,
                i,
            );
        } else if matches!(c, b'n' | b'N') && next == Some(b'\'') {
            // NCHAR, then the quote is scanned again as an ordinary string.
            let mode = if backslash_escapes {
                Quoted::Extended
            } else {
                Quoted::Standard
            };
            let (value, end) = string(text, i + 1, mode)?;
            i = end;
            tok(
                &mut out,
                Tok::Str {
                    value,
                    kind: StrKind::National,
                },
                start,
                i,
            );
        } else if matches!(c, b'b' | b'B' | b'x' | b'X') && next == Some(b'\'') {
            let (value, end) = string(text, i + 1, Quoted::Bits)?;
            i = end;
            tok(
                &mut out,
                Tok::Str {
                    value,
                    kind: StrKind::Bits,
                },
                start,
                i,
            );
        } else if matches!(c, b'u' | b'U')
            && next == Some(b'&')
            && matches!(b.get(i + 2), Some(b'\'' | b'"'))
        {
            return Err(LexError::new(
                "Unicode-escape literals (U&'…', U&\"…\") are not followed",
            ));
        } else if c == b'"' {
            let (value, end) = quoted_ident(text, i)?;
            i = end;
            tok(&mut out, Tok::QIdent(value), start, i);
        } else if c == b'$' {
            if next.is_some_and(|n| n.is_ascii_digit()) {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                if i < b.len() && ident_cont(b[i]) {
                    return Err(LexError::new("trailing junk after a parameter"));
                }
                tok(&mut out, Tok::Param, start, i);
            } else if let Some(delim_end) = dollar_delimiter(b, i) {
                let delim = &text[i..delim_end];
                let body_start = delim_end;
                let Some(rel) = text[body_start..].find(delim) else {
                    return Err(LexError::new("unterminated dollar-quoted string"));
                };
                let value = text[body_start..body_start + rel].to_string();
                i = body_start + rel + delim.len();
                tok(
                    &mut out,
                    Tok::Str {
                        value,
                        kind: StrKind::Plain,
                    },
                    start,
                    i,
                );
            } else {
                // `$` not starting a delimiter: a lone character.
                i += 1;
                tok(&mut out, Tok::Op, start, i);
            }
        } else if c.is_ascii_digit() || (c == b'.' && next.is_some_and(|n| n.is_ascii_digit())) {
            i = number_end(b, i);
            if i < b.len() && ident_start(b[i]) {
                return Err(LexError::new("trailing junk after a numeric literal"));
            }
            tok(&mut out, Tok::Number, start, i);
        } else if ident_start(c) {
            while i < b.len() && ident_cont(b[i]) {
                i += 1;
            }
            // Whole UTF-8 characters only (every byte ≥ 0x80 is ident_cont).
            tok(&mut out, Tok::Word, start, i);
        } else if c == b';' {
            i += 1;
            tok(&mut out, Tok::Semi, start, i);
        } else if op_char(c) {
            // An operator stops where a comment starts.
            while i < b.len()
                && op_char(b[i])
                && !(b[i] == b'-' && b.get(i + 1) == Some(&b'-'))
                && !(b[i] == b'/' && b.get(i + 1) == Some(&b'*'))
            {
                i += 1;
            }
            tok(&mut out, Tok::Op, start, i);
        } else {
            // Punctuation and anything else: one character.
            i += text[i..].chars().next().map_or(1, char::len_utf8);
            tok(&mut out, Tok::Op, start, i);
        }
    }
    Ok(out)
}

/// End of a `--` comment: the next `\n` or `\r` (not included), or the end.
fn line_comment_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && !is_newline(b[i]) {
        i += 1;
    }
    i
}

/// End of a `/* … */` comment starting at `i`; comments nest.
fn block_comment_end(b: &[u8], mut i: usize) -> Result<usize, LexError> {
    let mut depth = 0usize;
    i += 2;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            i += 2;
            if depth == 0 {
                return Ok(i);
            }
            depth -= 1;
        } else {
            i += 1;
        }
    }
    Err(LexError::new("unterminated /* comment"))
}

/// `$tag$` starting at `i` (tag: letters, digits (not first), `_`, high
/// bytes; no `$`): its end.
fn dollar_delimiter(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    if b.get(j) == Some(&b'$') {
        return Some(j + 1);
    }
    if !b.get(j).is_some_and(|&c| ident_start(c)) {
        return None;
    }
    while j < b.len() && (ident_start(b[j]) || b[j].is_ascii_digit()) {
        j += 1;
    }
    (b.get(j) == Some(&b'$')).then_some(j + 1)
}

/// `digits[.digits][e[+-]digits]` or `.digits…`.
fn number_end(b: &[u8], mut i: usize) -> usize {
    let digits = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
    };
    digits(&mut i);
    if b.get(i) == Some(&b'.') && b.get(i + 1) != Some(&b'.') {
        i += 1;
        digits(&mut i);
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        if b.get(j).is_some_and(u8::is_ascii_digit) {
            i = j;
            digits(&mut i);
        }
    }
    i
}

/// A quoted identifier starting at `i`: its value and end.
fn quoted_ident(text: &str, i: usize) -> Result<(String, usize), LexError> {
    let b = text.as_bytes();
    let mut j = i + 1;
    let mut value = String::new();
    let mut run = j;
    loop {
        match b.get(j) {
            None => return Err(LexError::new("unterminated quoted identifier")),
            Some(b'"') if b.get(j + 1) == Some(&b'"') => {
                value.push_str(&text[run..j + 1]);
                j += 2;
                run = j;
            }
            Some(b'"') => {
                value.push_str(&text[run..j]);
                if value.is_empty() {
                    return Err(LexError::new("zero-length delimited identifier"));
                }
                return Ok((value, j + 1));
            }
            Some(_) => j += 1,
        }
    }
}

/// A string literal whose opening quote is at `q`: its value and end,
/// following `''`, backslash escapes (extended mode) and continuation
/// (`'a'` newline `'b'` is `'ab'`, scanned on in the same mode).
fn string(text: &str, q: usize, mode: Quoted) -> Result<(String, usize), LexError> {
    let b = text.as_bytes();
    let mut value: Vec<u8> = Vec::new();
    let mut j = q + 1;
    loop {
        let Some(&c) = b.get(j) else {
            return Err(LexError::new("unterminated quoted string"));
        };
        if c == b'\'' {
            if mode != Quoted::Bits && b.get(j + 1) == Some(&b'\'') {
                value.push(b'\'');
                j += 2;
                continue;
            }
            // The closing quote: the literal goes on if only whitespace
            // with a newline (and `--` comments) separates it from another
            // quote.
            match continuation(b, j + 1) {
                Some(next_quote) => {
                    j = next_quote + 1;
                    continue;
                }
                None => break,
            }
        }
        if c == b'\\' && mode == Quoted::Extended {
            let Some(&e) = b.get(j + 1) else {
                return Err(LexError::new("unterminated quoted string"));
            };
            j += 2;
            match e {
                b'b' => value.push(0x08),
                b'f' => value.push(0x0c),
                b'n' => value.push(b'\n'),
                b'r' => value.push(b'\r'),
                b't' => value.push(b'\t'),
                b'0'..=b'7' => {
                    let mut v = u32::from(e - b'0');
                    for _ in 0..2 {
                        match b.get(j) {
                            Some(&d @ b'0'..=b'7') => {
                                v = v * 8 + u32::from(d - b'0');
                                j += 1;
                            }
                            _ => break,
                        }
                    }
                    value.push((v & 0xff) as u8);
                }
                b'x' if b.get(j).is_some_and(u8::is_ascii_hexdigit) => {
                    let mut v = 0u32;
                    for _ in 0..2 {
                        match b.get(j) {
                            Some(&d) if d.is_ascii_hexdigit() => {
                                v = v * 16 + (d as char).to_digit(16).unwrap_or(0);
                                j += 1;
                            }
                            _ => break,
                        }
                    }
                    value.push(v as u8);
                }
                b'u' | b'U' => {
                    let n = if e == b'u' { 4 } else { 8 };
                    let hex = text
                        .get(j..j + n)
                        .filter(|h| h.bytes().all(|d| d.is_ascii_hexdigit()));
                    match hex
                        .and_then(|h| u32::from_str_radix(h, 16).ok())
                        .and_then(char::from_u32)
                    {
                        Some(ch) => {
                            let mut buf = [0u8; 4];
                            value.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                            j += n;
                        }
                        // PostgreSQL refuses an invalid Unicode escape.
                        None => return Err(LexError::new("invalid Unicode escape in a string")),
                    }
                }
                other => {
                    // The escaped byte itself (a multi-byte character's
                    // lead byte: the rest follows unescaped).
                    value.push(other);
                }
            }
            continue;
        }
        value.push(c);
        j += 1;
    }
    Ok((String::from_utf8_lossy(&value).into_owned(), j + 1))
}

/// After a closing quote at `i - 1`: if `{whitespace_with_newline}{quote}`
/// follows, the position of that quote.
fn continuation(b: &[u8], mut i: usize) -> Option<usize> {
    // horiz_whitespace*: spaces, tabs, form feeds, and `--` comments.
    loop {
        match b.get(i) {
            Some(b' ' | b'\t' | 0x0c | 0x0b) => i += 1,
            Some(b'-') if b.get(i + 1) == Some(&b'-') => i = line_comment_end(b, i),
            _ => break,
        }
    }
    // newline
    if !b.get(i).copied().is_some_and(is_newline) {
        return None;
    }
    i += 1;
    // special_whitespace*: any whitespace, or a `--` comment followed by a
    // newline.
    loop {
        match b.get(i) {
            Some(&c) if is_space(c) => i += 1,
            Some(b'-') if b.get(i + 1) == Some(&b'-') => {
                let end = line_comment_end(b, i);
                if end >= b.len() {
                    return None;
                }
                i = end + 1;
            }
            _ => break,
        }
    }
    (b.get(i) == Some(&b'\'')).then_some(i)
}
