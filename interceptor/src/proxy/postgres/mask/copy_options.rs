//! The options of `COPY … TO STDOUT …`, parsed as the server would: the
//! masking of the data depends on knowing its delimiter, quote, escape and
//! NULL string exactly, so anything not understood is an error.

use super::copy::CopyFormat;

/// Why COPY options were not understood (the statement should be refused
/// while masks are active: its data could not be parsed safely).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("COPY options not understood: {0}")]
pub struct CopyOptionsError(pub String);

fn opt_err<T>(msg: impl Into<String>) -> Result<T, CopyOptionsError> {
    Err(CopyOptionsError(msg.into()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// An identifier or keyword, lower-cased unless it was quoted.
    Word(String),
    Str(Vec<u8>),
    Num(String),
    Punct(u8),
}

/// Splits SQL into tokens: whitespace and comments skipped, strings
/// decoded (`'…'` with `''`; backslash escapes in `E'…'`, and in `'…'`
/// when `standard_conforming_strings` is off). `U&'…'` strings are errors.
/// Strict (the options): dollar quotes, prefixed strings and anything
/// unexpected are errors too. Lenient (the statement around them, which is
/// only skipped): dollar quotes and `B'…'`/`X'…'`/`N'…'` are strings,
/// other characters punctuation.
fn tokens(sql: &str, scs: bool, lenient: bool) -> Result<Vec<Tok>, CopyOptionsError> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if b[i..].starts_with(b"--") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0usize;
            loop {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else if i >= b.len() {
                    return opt_err("unterminated comment");
                } else {
                    i += 1;
                }
            }
        } else if c == b'\'' || ((c == b'e' || c == b'E') && b.get(i + 1) == Some(&b'\'')) {
            let escapes = c != b'\'' || !scs;
            i += if c == b'\'' { 1 } else { 2 };
            let (s, next) = string(b, i, escapes)?;
            i = next;
            if matches!(out.last(), Some(Tok::Str(_))) {
                return opt_err("adjacent string constants");
            }
            out.push(Tok::Str(s));
        } else if c == b'"' {
            let mut s = Vec::new();
            i += 1;
            loop {
                match b.get(i) {
                    None => return opt_err("unterminated quoted identifier"),
                    Some(b'"') if b.get(i + 1) == Some(&b'"') => {
                        s.push(b'"');
                        i += 2;
                    }
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(&x) => {
                        s.push(x);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Word(String::from_utf8_lossy(&s).into_owned()));
        } else if lenient
            && b.get(i + 1) == Some(&b'\'')
            && matches!(c, b'b' | b'B' | b'x' | b'X' | b'n' | b'N')
        {
            let (s, next) = string(b, i + 2, false)?;
            i = next;
            out.push(Tok::Str(s));
        } else if lenient && c == b'$' {
            // `$1` (a parameter) or a dollar quote `$tag$…$tag$`.
            let mut j = i + 1;
            if b.get(j).is_some_and(u8::is_ascii_digit) {
                while b.get(j).is_some_and(u8::is_ascii_digit) {
                    j += 1;
                }
                out.push(Tok::Word(sql[i..j].to_string()));
                i = j;
                continue;
            }
            while b
                .get(j)
                .is_some_and(|x| x.is_ascii_alphanumeric() || *x == b'_' || *x >= 0x80)
            {
                j += 1;
            }
            if b.get(j) != Some(&b'$') {
                return opt_err("a stray $");
            }
            let tag = &b[i..=j];
            let body = j + 1;
            let Some(end) = b[body..].windows(tag.len()).position(|w| w == tag) else {
                return opt_err("unterminated dollar quote");
            };
            out.push(Tok::Str(b[body..body + end].to_vec()));
            i = body + end + tag.len();
        } else if c.is_ascii_alphabetic() || c == b'_' || (lenient && c >= 0x80) {
            let start = i;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric()
                    || b[i] == b'_'
                    || b[i] == b'$'
                    || (lenient && b[i] >= 0x80))
            {
                i += 1;
            }
            if b.get(i) == Some(&b'&') || b.get(i) == Some(&b'\'') {
                return opt_err("U& or prefixed string constant");
            }
            out.push(Tok::Word(sql[start..i].to_ascii_lowercase()));
        } else if c.is_ascii_digit()
            || (!lenient && matches!(c, b'-' | b'+' | b'.'))
            || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            let start = i;
            i += 1;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
            out.push(Tok::Num(sql[start..i].to_string()));
        } else if matches!(c, b'(' | b')' | b',' | b'*' | b';' | b'=') || (lenient && c.is_ascii())
        {
            out.push(Tok::Punct(c));
            i += 1;
        } else {
            return opt_err(format!("unexpected character {:?}", c as char));
        }
    }
    Ok(out)
}

/// A string constant from `i` (after its opening quote): its bytes and the
/// position after its closing quote.
fn string(b: &[u8], mut i: usize, escapes: bool) -> Result<(Vec<u8>, usize), CopyOptionsError> {
    let mut s = Vec::new();
    loop {
        match b.get(i) {
            None => return opt_err("unterminated string constant"),
            Some(b'\'') if b.get(i + 1) == Some(&b'\'') => {
                s.push(b'\'');
                i += 2;
            }
            Some(b'\'') => return Ok((s, i + 1)),
            Some(b'\\') if escapes => {
                let Some(&e) = b.get(i + 1) else {
                    return opt_err("unterminated string constant");
                };
                i += 2;
                match e {
                    b'b' => s.push(8),
                    b'f' => s.push(12),
                    b'n' => s.push(b'\n'),
                    b'r' => s.push(b'\r'),
                    b't' => s.push(b'\t'),
                    b'0'..=b'7' => {
                        let mut v = u32::from(e - b'0');
                        let mut n = 1;
                        while n < 3 && matches!(b.get(i), Some(b'0'..=b'7')) {
                            v = v * 8 + u32::from(b[i] - b'0');
                            i += 1;
                            n += 1;
                        }
                        s.push(v as u8);
                    }
                    b'x' => {
                        let mut v = 0u32;
                        let mut n = 0;
                        while n < 2 && b.get(i).is_some_and(u8::is_ascii_hexdigit) {
                            v = v * 16 + (b[i] as char).to_digit(16).unwrap_or(0);
                            i += 1;
                            n += 1;
                        }
                        if n == 0 {
                            return opt_err("\\x without hex digits");
                        }
                        s.push(v as u8);
                    }
                    b'u' | b'U' => return opt_err("unicode escape in a string constant"),
                    other => s.push(other),
                }
            }
            Some(&x) => {
                s.push(x);
                i += 1;
            }
        }
    }
}

fn one_byte(name: &str, v: &[u8]) -> Result<u8, CopyOptionsError> {
    match v {
        [c] if c.is_ascii() => Ok(*c),
        _ => opt_err(format!("{name} must be a single one-byte character")),
    }
}

#[derive(Default)]
struct Opts {
    format: Option<String>,
    delimiter: Option<Vec<u8>>,
    null: Option<Vec<u8>>,
    quote: Option<Vec<u8>>,
    escape: Option<Vec<u8>>,
    seen: Vec<String>,
}

impl Opts {
    fn once(&mut self, name: &str) -> Result<(), CopyOptionsError> {
        if self.seen.iter().any(|s| s == name) {
            return opt_err(format!("option {name} given twice"));
        }
        self.seen.push(name.to_string());
        Ok(())
    }

    fn set_format(&mut self, f: &str) -> Result<(), CopyOptionsError> {
        self.once("format")?;
        match f {
            "text" | "csv" | "binary" => {
                self.format = Some(f.to_string());
                Ok(())
            }
            _ => opt_err(format!("unknown COPY format {f:?}")),
        }
    }

    fn finish(self) -> Result<CopyFormat, CopyOptionsError> {
        let format = self.format.as_deref().unwrap_or("text");
        if format == "binary" {
            if self.delimiter.is_some()
                || self.null.is_some()
                || self.quote.is_some()
                || self.escape.is_some()
            {
                return opt_err("options that binary COPY does not take");
            }
            return Ok(CopyFormat::Binary);
        }
        let csv = format == "csv";
        if !csv && (self.quote.is_some() || self.escape.is_some()) {
            return opt_err("QUOTE or ESCAPE outside CSV");
        }
        let delimiter = match &self.delimiter {
            Some(d) => one_byte("DELIMITER", d)?,
            None if csv => b',',
            None => b'\t',
        };
        if matches!(delimiter, b'\n' | b'\r') || (!csv && delimiter == b'\\') {
            return opt_err("invalid DELIMITER");
        }
        let null = self
            .null
            .unwrap_or_else(|| if csv { Vec::new() } else { b"\\N".to_vec() });
        if null.iter().any(|c| matches!(c, b'\n' | b'\r')) || null.contains(&delimiter) {
            return opt_err("invalid NULL string");
        }
        if !csv {
            return Ok(CopyFormat::Text { delimiter, null });
        }
        let quote = match &self.quote {
            Some(q) => one_byte("QUOTE", q)?,
            None => b'"',
        };
        let escape = match &self.escape {
            Some(e) => one_byte("ESCAPE", e)?,
            None => quote,
        };
        if quote == delimiter
            || null.contains(&quote)
            || matches!(quote, b'\n' | b'\r')
            || matches!(escape, b'\n' | b'\r')
        {
            return opt_err("invalid QUOTE or ESCAPE");
        }
        Ok(CopyFormat::Csv {
            delimiter,
            quote,
            escape,
            null,
        })
    }
}

/// The data format of `COPY … TO STDOUT <options>`, from what follows
/// `TO STDOUT` (a trailing `;` is allowed). Both syntaxes: `[WITH] (FORMAT
/// csv, DELIMITER ';', …)` and the old `[WITH] [BINARY] [DELIMITER [AS]
/// ','] [NULL [AS] ''] [CSV [HEADER] [QUOTE [AS] '"'] [ESCAPE [AS] '\']
/// [FORCE QUOTE …]]`. `standard_conforming_strings` is the session's
/// setting (it decides what a backslash in `'…'` means). Anything not
/// understood is an error: the caller refuses the statement rather than
/// parse its data with a guess. An ENCODING other than UTF-8 is refused
/// too.
pub fn copy_options(
    sql: &str,
    standard_conforming_strings: bool,
) -> Result<CopyFormat, CopyOptionsError> {
    options(&tokens(sql, standard_conforming_strings, false)?, false)
}

fn word(t: &[Tok], i: usize) -> Option<String> {
    match t.get(i) {
        Some(Tok::Word(w)) => Some(w.clone()),
        _ => None,
    }
}

/// The index after the `)` that closes the `(` at `i`.
fn skip_parens(t: &[Tok], mut i: usize) -> Result<usize, CopyOptionsError> {
    let mut depth = 0usize;
    loop {
        match t.get(i) {
            None => return opt_err("unbalanced parentheses"),
            Some(Tok::Punct(b'(')) => depth += 1,
            Some(Tok::Punct(b')')) => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
}

/// The data format of a whole `COPY { table [(columns)] | (query) } TO
/// STDOUT [options]` statement (`COPY BINARY table TO STDOUT`, the old
/// syntax, included). The table or query is skipped token by token
/// (strings, dollar quotes and comments understood), so `TO STDOUT` inside
/// the query is not taken for the statement's. Errors: not a COPY … TO
/// STDOUT (COPY FROM, TO a file or program), or options not understood.
pub fn copy_statement_format(
    sql: &str,
    standard_conforming_strings: bool,
) -> Result<CopyFormat, CopyOptionsError> {
    let t = tokens(sql, standard_conforming_strings, true)?;
    if word(&t, 0).as_deref() != Some("copy") {
        return opt_err("not a COPY statement");
    }
    let mut i = 1;
    let binary = word(&t, i).as_deref() == Some("binary");
    if binary {
        i += 1;
    }
    if t.get(i) == Some(&Tok::Punct(b'(')) {
        i = skip_parens(&t, i)?;
    } else {
        if word(&t, i).is_none() {
            return opt_err("COPY what?");
        }
        i += 1;
        while t.get(i) == Some(&Tok::Punct(b'.')) && word(&t, i + 1).is_some() {
            i += 2;
        }
        if t.get(i) == Some(&Tok::Punct(b'(')) {
            i = skip_parens(&t, i)?;
        }
    }
    if word(&t, i).as_deref() != Some("to") {
        return opt_err("not COPY … TO");
    }
    if word(&t, i + 1).as_deref() != Some("stdout") {
        return opt_err("COPY TO a file or a program, not STDOUT");
    }
    options(&t[i + 2..], binary)
}

/// The options from their tokens (`binary`: the statement said `COPY
/// BINARY table`).
fn options(t: &[Tok], binary: bool) -> Result<CopyFormat, CopyOptionsError> {
    let t = match t.last() {
        Some(Tok::Punct(b';')) => &t[..t.len() - 1],
        _ => t,
    };
    let mut o = Opts::default();
    if binary {
        o.set_format("binary")?;
    }
    let mut i = 0;
    // `[USING] DELIMITERS 'x'` (old syntax, before WITH).
    if word(t, i).as_deref() == Some("using") {
        i += 1;
    }
    if word(t, i).as_deref() == Some("delimiters") {
        o.once("delimiter")?;
        match t.get(i + 1) {
            Some(Tok::Str(s)) => o.delimiter = Some(s.clone()),
            _ => return opt_err("DELIMITERS needs a string constant"),
        }
        i += 2;
    } else if i == 1 {
        return opt_err("USING what?");
    }
    if word(t, i).as_deref() == Some("with") {
        i += 1;
    }
    if t.get(i) == Some(&Tok::Punct(b'(')) {
        i += 1;
        loop {
            let Some(name) = word(t, i) else {
                return opt_err("expected an option name");
            };
            i += 1;
            // The argument: up to the next `,` or `)` at this level.
            let start = i;
            let mut depth = 0usize;
            while let Some(tok) = t.get(i) {
                match tok {
                    Tok::Punct(b'(') => depth += 1,
                    Tok::Punct(b')') if depth == 0 => break,
                    Tok::Punct(b')') => depth -= 1,
                    Tok::Punct(b',') if depth == 0 => break,
                    _ => {}
                }
                i += 1;
            }
            let arg = &t[start..i];
            new_option(&mut o, &name, arg)?;
            match t.get(i) {
                Some(Tok::Punct(b',')) => i += 1,
                Some(Tok::Punct(b')')) => {
                    i += 1;
                    break;
                }
                _ => return opt_err("unterminated option list"),
            }
        }
    } else {
        while i < t.len() {
            let Some(w) = word(t, i) else {
                return opt_err("expected an option keyword");
            };
            i += 1;
            let str_arg = |i: &mut usize| -> Result<Vec<u8>, CopyOptionsError> {
                if word(t, *i).as_deref() == Some("as") {
                    *i += 1;
                }
                match t.get(*i) {
                    Some(Tok::Str(s)) => {
                        *i += 1;
                        Ok(s.clone())
                    }
                    _ => opt_err(format!("{w} needs a string constant")),
                }
            };
            match w.as_str() {
                "binary" => o.set_format("binary")?,
                "csv" => o.set_format("csv")?,
                "freeze" | "header" => o.once(&w)?,
                "delimiter" => {
                    o.once(&w)?;
                    o.delimiter = Some(str_arg(&mut i)?);
                }
                "null" => {
                    o.once(&w)?;
                    o.null = Some(str_arg(&mut i)?);
                }
                "quote" => {
                    o.once(&w)?;
                    o.quote = Some(str_arg(&mut i)?);
                }
                "escape" => {
                    o.once(&w)?;
                    o.escape = Some(str_arg(&mut i)?);
                }
                "encoding" => {
                    o.once(&w)?;
                    encoding(&str_arg(&mut i)?)?;
                }
                "force" => {
                    // FORCE QUOTE {* | cols}, FORCE NOT NULL cols, FORCE NULL cols.
                    match word(t, i).as_deref() {
                        Some("quote") | Some("null") => i += 1,
                        Some("not") if word(t, i + 1).as_deref() == Some("null") => i += 2,
                        _ => return opt_err("FORCE what?"),
                    }
                    if t.get(i) == Some(&Tok::Punct(b'*')) {
                        i += 1;
                    } else {
                        loop {
                            if word(t, i).is_none() {
                                return opt_err("FORCE needs column names");
                            }
                            i += 1;
                            if t.get(i) == Some(&Tok::Punct(b',')) {
                                i += 1;
                            } else {
                                break;
                            }
                        }
                    }
                }
                _ => return opt_err(format!("unknown COPY option {w:?}")),
            }
        }
    }
    if i != t.len() {
        return opt_err("text after the options");
    }
    o.finish()
}

fn encoding(v: &[u8]) -> Result<(), CopyOptionsError> {
    let e = String::from_utf8_lossy(v)
        .to_ascii_lowercase()
        .replace(['-', '_'], "");
    if e == "utf8" || e == "unicode" {
        Ok(())
    } else {
        opt_err("an ENCODING other than UTF8")
    }
}

/// One option of the parenthesised syntax.
fn new_option(o: &mut Opts, name: &str, arg: &[Tok]) -> Result<(), CopyOptionsError> {
    let str_or_word = |what: &str| -> Result<Vec<u8>, CopyOptionsError> {
        match arg {
            [Tok::Str(s)] => Ok(s.clone()),
            [Tok::Word(w)] => Ok(w.clone().into_bytes()),
            _ => opt_err(format!("{what} needs one value")),
        }
    };
    match name {
        "format" => {
            let f = str_or_word("FORMAT")?;
            o.set_format(&String::from_utf8_lossy(&f).to_ascii_lowercase())
        }
        "delimiter" | "null" | "quote" | "escape" | "default" => {
            o.once(name)?;
            let v = match arg {
                [Tok::Str(s)] => s.clone(),
                _ => return opt_err(format!("{name} needs a string constant")),
            };
            match name {
                "delimiter" => o.delimiter = Some(v),
                "null" => o.null = Some(v),
                "quote" => o.quote = Some(v),
                "escape" => o.escape = Some(v),
                _ => {}
            }
            Ok(())
        }
        "header" | "freeze" => {
            o.once(name)?;
            match arg {
                [] | [Tok::Word(_)] | [Tok::Str(_)] | [Tok::Num(_)] => Ok(()),
                _ => opt_err(format!("{name} takes one value")),
            }
        }
        "encoding" => {
            o.once(name)?;
            encoding(&str_or_word("ENCODING")?)
        }
        // COPY FROM options (the server refuses them for COPY TO) and
        // FORCE_QUOTE: they do not change how the data is written.
        "force_quote" | "force_not_null" | "force_null" | "on_error" | "reject_limit"
        | "log_verbosity" => {
            o.once(name)?;
            Ok(())
        }
        _ => opt_err(format!("unknown COPY option {name:?}")),
    }
}
