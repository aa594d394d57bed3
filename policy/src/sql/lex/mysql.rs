//! MySQL / MariaDB lexical rules (`sql/sql_lex.cc`, `lex_one_token`) for
//! what decides structure: `#` and `-- ` comments, `/* */` comments that do
//! not nest, executable comments (`/*!…*/`, MariaDB `/*M!…*/`, with or
//! without a version that says whether the server runs their content),
//! strings (`'…'`, `"…"` unless `ANSI_QUOTES`, with backslash escapes
//! unless `NO_BACKSLASH_ESCAPES`, `N'…'`, `X'…'`, `B'…'`), back-quoted
//! identifiers, user and system variables, `?` and `\N`.
//!
//! Refused (the statement is then unparsed): a NUL byte, a `/*` inside an
//! executable comment, a versioned comment when the server's version is
//! unknown, and — on MySQL, whose rules here differ between releases — an
//! optimizer-hint comment holding quotes, a 6-digit version, or a token
//! starting with `$` (MySQL 9 dollar quotes).

use super::{Encoding, LexError, Lexing, Server, StrKind, Tok, Token};

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn is_cntrl(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

fn ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

pub(super) fn lex(text: &str, l: &Lexing) -> Result<Vec<Token>, LexError> {
    let mut at = 0;
    lex_from(text, l, &mut at).map_err(|e| e.at(at))
}

fn lex_from(text: &str, l: &Lexing, at: &mut usize) -> Result<Vec<Token>, LexError> {
    let b = text.as_bytes();
    if let Some(p) = b.iter().position(|&c| c == 0) {
        // The server ends a `#` comment at a NUL and then fails on it;
        // clients escape NUL in literals (`\0`), so refusing it costs nothing.
        *at = p;
        return Err(LexError::new("a NUL byte in the query"));
    }
    let mariadb = matches!(l.server, Server::MariaDb(_));
    let mut out = Vec::new();
    let mut i = 0;
    // Inside an executable comment (its content is code).
    let mut in_exec = false;
    let push = |out: &mut Vec<Token>, tok: Tok, start: usize, end: usize| {
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
            push(&mut out, Tok::Space, start, i);
        } else if c == b'#'
            || (c == b'-'
                && next == Some(b'-')
                && b.get(i + 2).is_none_or(|&n| is_space(n) || is_cntrl(n)))
        {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            push(&mut out, Tok::Comment, start, i);
        } else if c == b'/' && next == Some(b'*') {
            if in_exec {
                return Err(LexError::new("a comment inside an executable comment"));
            }
            let bang = b.get(i + 2) == Some(&b'!');
            let maria_bang = mariadb && b.get(i + 2) == Some(&b'M') && b.get(i + 3) == Some(&b'!');
            if bang || maria_bang {
                let mut j = i + if maria_bang { 4 } else { 3 };
                let digits = b[j..].iter().take_while(|d| d.is_ascii_digit()).count();
                if digits >= 5 {
                    let (version, len) = version_of(&b[j..], l.server, digits)?;
                    if executes(l.server, version, maria_bang)? {
                        j += len;
                        in_exec = true;
                        push(&mut out, Tok::ExecMarker, start, j);
                        i = j;
                    } else {
                        // A comment for another version: skipped, with one
                        // level of nested comment allowed inside.
                        i = consume_comment(b, i + 2, 1)?;
                        push(&mut out, Tok::Comment, start, i);
                    }
                } else {
                    // `/*!` without a version: the content is code.
                    in_exec = true;
                    push(&mut out, Tok::ExecMarker, start, j);
                    i = j;
                }
            } else {
                if !mariadb && b.get(i + 2) == Some(&b'+') {
                    let end = consume_comment(b, i + 2, 0)?;
                    if text[i..end].contains(['\'', '"', '`']) {
                        return Err(LexError::new(
                            "an optimizer-hint comment with quotes (MySQL reads hints with its own lexer)",
                        ));
                    }
                    i = end;
                } else {
                    i = consume_comment(b, i + 2, 0)?;
                }
                push(&mut out, Tok::Comment, start, i);
            }
        } else if c == b'*' && next == Some(b'/') && in_exec {
            in_exec = false;
            i += 2;
            push(&mut out, Tok::ExecMarker, start, i);
        } else if c == b'\'' || (c == b'"' && !l.ansi_quotes) {
            let (value, end) = string(text, i, c, l)?;
            i = end;
            push(
                &mut out,
                Tok::Str {
                    value,
                    kind: StrKind::Plain,
                },
                start,
                i,
            );
        } else if c == b'"' || c == b'`' {
            let (value, end) = quoted_ident(text, i, c)?;
            i = end;
            push(&mut out, Tok::QIdent(value), start, i);
        } else if matches!(c, b'n' | b'N') && next == Some(b'\'') {
            let (value, end) = string(text, i + 1, b'\'', l)?;
            i = end;
            push(
                &mut out,
                Tok::Str {
                    value,
                    kind: StrKind::National,
                },
                start,
                i,
            );
        } else if matches!(c, b'x' | b'X' | b'b' | b'B') && next == Some(b'\'') {
            let hex = matches!(c, b'x' | b'X');
            let mut j = i + 2;
            while j < b.len()
                && (if hex {
                    b[j].is_ascii_hexdigit()
                } else {
                    matches!(b[j], b'0' | b'1')
                })
            {
                j += 1;
            }
            if b.get(j) != Some(&b'\'') {
                return Err(LexError::new("a malformed hex or bit string"));
            }
            let value = text[i + 2..j].to_string();
            i = j + 1;
            push(
                &mut out,
                Tok::Str {
                    value,
                    kind: StrKind::Bits,
                },
                start,
                i,
            );
        } else if c == b'@' {
            i = variable(text, i, l, &mut out)?;
        } else if c == b'?' {
            i += 1;
            push(&mut out, Tok::Param, start, i);
        } else if c == b'\\' {
            if next == Some(b'N') {
                i += 2;
            } else {
                i += 1;
            }
            push(&mut out, Tok::Op, start, i);
        } else if c == b';' {
            if in_exec {
                // The server starts the next statement outside the comment.
                return Err(LexError::new("a `;` inside an executable comment"));
            }
            i += 1;
            push(&mut out, Tok::Semi, start, i);
        } else if c == b'$' && !mariadb {
            return Err(LexError::new(
                "a token starting with `$` (MySQL 9 reads `$tag$` as a dollar-quoted string)",
            ));
        } else if c.is_ascii_digit() || (c == b'.' && next.is_some_and(|n| n.is_ascii_digit())) {
            // A number, or an identifier that starts with digits (`1abc`).
            let number = number_end(b, i);
            let hex = c == b'0' && next == Some(b'x') && number > i + 2;
            if number < b.len() && ident_char(b[number]) {
                let mut j = number;
                while j < b.len() && ident_char(b[j]) {
                    j += 1;
                }
                i = j;
                push(&mut out, Tok::Word, start, i);
            } else if hex {
                // 0x41 is a hex string literal, like X'41'.
                i = number;
                let value = text[start + 2..i].to_string();
                push(
                    &mut out,
                    Tok::Str {
                        value,
                        kind: StrKind::Bits,
                    },
                    start,
                    i,
                );
            } else {
                i = number;
                push(&mut out, Tok::Number, start, i);
            }
        } else if ident_char(c) {
            while i < b.len() && ident_char(b[i]) {
                i += 1;
            }
            push(&mut out, Tok::Word, start, i);
        } else {
            i += text[i..].chars().next().map_or(1, char::len_utf8);
            push(&mut out, Tok::Op, start, i);
        }
    }
    if in_exec {
        *at = b.len();
        return Err(LexError::new("an unterminated executable comment"));
    }
    Ok(out)
}

/// The version of a versioned comment: 5 digits, or 6 (MariaDB always;
/// MySQL only when a space follows — which has changed between releases,
/// so refused there).
fn version_of(d: &[u8], server: Server, digits: usize) -> Result<(u32, usize), LexError> {
    let len = if digits >= 6 {
        match server {
            Server::MariaDb(_) => 6,
            _ => {
                return Err(LexError::new(
                    "a versioned comment with a 6-digit version on MySQL",
                ));
            }
        }
    } else {
        5
    };
    let v = std::str::from_utf8(&d[..len])
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .ok_or_else(|| LexError::new("a malformed comment version"))?;
    Ok((v, len))
}

/// Whether the server runs the content of a versioned comment.
fn executes(server: Server, version: u32, maria_syntax: bool) -> Result<bool, LexError> {
    match server {
        Server::Unknown => Err(LexError::new(
            "a versioned comment, and the server's version is not known",
        )),
        // MariaDB skips MySQL-only versions 5.7.0–9.9.99 in `/*!` comments.
        Server::MariaDb(id) => {
            Ok(version <= id && (!(50700..=99999).contains(&version) || maria_syntax))
        }
        Server::MySql(id) => Ok(version <= id),
    }
}

/// Skips a comment whose body starts at `i` (after `/*`); `nest` levels of
/// nested `/* */` are allowed inside. Returns the end (after `*/`).
fn consume_comment(b: &[u8], mut i: usize, nest: u32) -> Result<usize, LexError> {
    while i < b.len() {
        if nest > 0 && b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i = consume_comment(b, i + 2, nest - 1)?;
            continue;
        }
        if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            return Ok(i + 2);
        }
        i += 1;
    }
    Err(LexError::new("an unterminated /* comment"))
}

fn number_end(b: &[u8], mut i: usize) -> usize {
    if b[i] == b'0' && matches!(b.get(i + 1), Some(b'x' | b'b')) {
        let hex = b[i + 1] == b'x';
        let mut j = i + 2;
        while j < b.len()
            && (if hex {
                b[j].is_ascii_hexdigit()
            } else {
                matches!(b[j], b'0' | b'1')
            })
        {
            j += 1;
        }
        if j > i + 2 {
            return j;
        }
    }
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    if b.get(i) == Some(&b'.') && b.get(i + 1) != Some(&b'.') {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        if b.get(j).is_some_and(u8::is_ascii_digit) {
            i = j;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    i
}

/// A string literal with quote `q` at `i`: its value (unescaped as the
/// server does) and end.
///
/// The server skips one *byte* after a backslash, not one character: after
/// `\` a two-byte character's lead byte is escaped, and its trail byte —
/// `0x5c` in Shift-JIS, Big5, GBK and GB18030 — is read again as a
/// backslash. So in those character sets a backslash before a non-ASCII
/// character is refused (UTF-8 and single-byte sets have no ASCII trail
/// bytes: there the difference cannot change where the literal ends).
fn string(text: &str, i: usize, q: u8, l: &Lexing) -> Result<(String, usize), LexError> {
    let backslash = l.backslash_escapes;
    let ascii_trails = matches!(
        l.encoding,
        Encoding::ShiftJis | Encoding::Big5 | Encoding::Gbk | Encoding::Gb18030 | Encoding::Uhc
    );
    let b = text.as_bytes();
    let mut value = String::new();
    let mut j = i + 1;
    let mut run = j;
    loop {
        let Some(&c) = b.get(j) else {
            return Err(LexError::new("an unterminated string"));
        };
        if c == b'\\' && backslash {
            value.push_str(&text[run..j]);
            let Some(e) = text[j + 1..].chars().next() else {
                return Err(LexError::new("an unterminated string"));
            };
            if ascii_trails && !e.is_ascii() {
                return Err(LexError::new(
                    "a backslash before a multi-byte character (the server escapes its first byte only)",
                ));
            }
            match e {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                'r' => value.push('\r'),
                'b' => value.push('\u{8}'),
                '0' => value.push('\0'),
                'Z' => value.push('\u{1a}'),
                '%' | '_' => {
                    value.push('\\');
                    value.push(e);
                }
                other => value.push(other),
            }
            j += 1 + e.len_utf8();
            run = j;
            continue;
        }
        if c == q {
            if b.get(j + 1) == Some(&q) {
                value.push_str(&text[run..j + 1]);
                j += 2;
                run = j;
                continue;
            }
            value.push_str(&text[run..j]);
            return Ok((value, j + 1));
        }
        j += 1;
    }
}

/// A back-quoted (or, with `ANSI_QUOTES`, double-quoted) identifier.
fn quoted_ident(text: &str, i: usize, q: u8) -> Result<(String, usize), LexError> {
    let b = text.as_bytes();
    let mut value = String::new();
    let mut j = i + 1;
    let mut run = j;
    loop {
        match b.get(j) {
            None => return Err(LexError::new("an unterminated quoted identifier")),
            Some(&c) if c == q => {
                if b.get(j + 1) == Some(&q) {
                    value.push_str(&text[run..j + 1]);
                    j += 2;
                    run = j;
                    continue;
                }
                value.push_str(&text[run..j]);
                return Ok((value, j + 1));
            }
            Some(_) => j += 1,
        }
    }
}

/// `@name`, `@'name'`, `@"name"`, `` @`name` ``, `@@[scope.]name`.
fn variable(text: &str, i: usize, l: &Lexing, out: &mut Vec<Token>) -> Result<usize, LexError> {
    let b = text.as_bytes();
    let start = i;
    if b.get(i + 1) == Some(&b'@') {
        let mut j = i + 2;
        if matches!(b.get(j), Some(b'`')) {
            let (_, end) = quoted_ident(text, j, b'`')?;
            j = end;
        } else {
            while j < b.len() && (ident_char(b[j]) || b[j] == b'.') {
                j += 1;
            }
        }
        out.push(Token {
            tok: Tok::Var(None),
            range: start..j,
        });
        return Ok(j);
    }
    let (name, end) = match b.get(i + 1) {
        Some(b'\'') => string(text, i + 1, b'\'', l)?,
        Some(b'"') if !l.ansi_quotes => string(text, i + 1, b'"', l)?,
        Some(&q @ (b'`' | b'"')) => quoted_ident(text, i + 1, q)?,
        _ => {
            let mut j = i + 1;
            while j < b.len() && (ident_char(b[j]) || b[j] == b'.') {
                j += 1;
            }
            (text[i + 1..j].to_string(), j)
        }
    };
    out.push(Token {
        tok: Tok::Var(Some(name)),
        range: start..end,
    });
    Ok(end)
}
