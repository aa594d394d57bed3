//! Query bytes → text, with the character boundaries the server uses.
//!
//! A server lexes a query in its session's character set. In most sets an
//! ASCII byte is always that ASCII character, so where strings and comments
//! begin and end does not depend on how the other bytes are read. A few
//! sets — Shift-JIS, Big5, GBK, UHC, GB18030 — let the *second* byte of a
//! two-byte character be ASCII, including `\` (0x5c), `'`-free but
//! backslash-bearing pairs such as SJIS `0x95 0x5c`: read as one character
//! it is a letter, read byte by byte it is a letter's lead byte and a
//! backslash that escapes the quote after it. So for those sets the
//! boundaries here follow the server's own rules exactly, and any sequence
//! that is not a complete, valid character is an error (the statement is
//! judged as unparsed): never guessed, never lossily replaced.
//!
//! Within a character that *is* valid, only the mapping to Unicode is
//! looked up (with `encoding_rs`); a character it cannot map becomes
//! U+FFFD, which changes the text shown in records but never where a
//! literal begins or ends.

use std::borrow::Cow;

/// The character set a session's query bytes are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// UTF-8 (PostgreSQL `UTF8`, MySQL `utf8mb4`/`utf8mb3`): must be valid.
    Utf8,
    /// Bytes above 0x7f are opaque but never form ASCII: every single-byte
    /// ASCII-compatible set (LATIN1…, WIN125x, KOI8…) and the EUC family
    /// (every byte of a multi-byte character is ≥ 0x80). `label` is the
    /// `encoding_rs` label used to show the text, if there is one.
    AsciiSafe(Option<&'static str>),
    /// Shift-JIS (PostgreSQL `SJIS`, `SHIFT_JIS_2004`; MySQL `sjis`, `cp932`).
    ShiftJis,
    /// Big5 as MySQL reads it (lead bytes 0xa1–0xf9; PostgreSQL `BIG5`).
    Big5,
    /// GBK (PostgreSQL `GBK`, MySQL `gbk`).
    Gbk,
    /// UHC / CP949 (PostgreSQL `UHC`).
    Uhc,
    /// GB18030 (PostgreSQL `GB18030`, MySQL `gb18030`).
    Gb18030,
    /// A set whose byte boundaries are not followed here: only pure-ASCII
    /// query text can be judged.
    Unsupported,
    /// A set in which even ASCII bytes are not ASCII characters (MySQL
    /// `swe7`, `ucs2`, `utf16`, `utf32`): nothing can be judged.
    NotAscii,
}

impl Encoding {
    /// The encoding named by PostgreSQL's `client_encoding` (as reported in
    /// `ParameterStatus`; aliases are accepted, case-insensitively).
    pub fn from_postgres(name: &str) -> Encoding {
        let n = name.trim().to_ascii_uppercase().replace(['-', '_'], "");
        match n.as_str() {
            "UTF8" | "UNICODE" => Encoding::Utf8,
            "SQLASCII" => Encoding::AsciiSafe(None),
            "LATIN1" | "ISO88591" => Encoding::AsciiSafe(Some("iso-8859-1")),
            "LATIN2" | "ISO88592" => Encoding::AsciiSafe(Some("iso-8859-2")),
            "LATIN3" | "ISO88593" => Encoding::AsciiSafe(Some("iso-8859-3")),
            "LATIN4" | "ISO88594" => Encoding::AsciiSafe(Some("iso-8859-4")),
            "LATIN5" | "ISO88599" => Encoding::AsciiSafe(Some("iso-8859-9")),
            "LATIN6" | "ISO885910" => Encoding::AsciiSafe(Some("iso-8859-10")),
            "LATIN7" | "ISO885913" => Encoding::AsciiSafe(Some("iso-8859-13")),
            "LATIN8" | "ISO885914" => Encoding::AsciiSafe(Some("iso-8859-14")),
            "LATIN9" | "ISO885915" => Encoding::AsciiSafe(Some("iso-8859-15")),
            "LATIN10" | "ISO885916" => Encoding::AsciiSafe(Some("iso-8859-16")),
            "ISO88595" => Encoding::AsciiSafe(Some("iso-8859-5")),
            "ISO88596" => Encoding::AsciiSafe(Some("iso-8859-6")),
            "ISO88597" => Encoding::AsciiSafe(Some("iso-8859-7")),
            "ISO88598" => Encoding::AsciiSafe(Some("iso-8859-8")),
            "WIN866" | "ALT" => Encoding::AsciiSafe(Some("ibm866")),
            "WIN874" => Encoding::AsciiSafe(Some("windows-874")),
            "WIN1250" => Encoding::AsciiSafe(Some("windows-1250")),
            "WIN1251" | "WIN" => Encoding::AsciiSafe(Some("windows-1251")),
            "WIN1252" => Encoding::AsciiSafe(Some("windows-1252")),
            "WIN1253" => Encoding::AsciiSafe(Some("windows-1253")),
            "WIN1254" => Encoding::AsciiSafe(Some("windows-1254")),
            "WIN1255" => Encoding::AsciiSafe(Some("windows-1255")),
            "WIN1256" => Encoding::AsciiSafe(Some("windows-1256")),
            "WIN1257" => Encoding::AsciiSafe(Some("windows-1257")),
            "WIN1258" => Encoding::AsciiSafe(Some("windows-1258")),
            "KOI8R" | "KOI8" => Encoding::AsciiSafe(Some("koi8-r")),
            "KOI8U" => Encoding::AsciiSafe(Some("koi8-u")),
            "EUCJP" | "EUCJIS2004" => Encoding::AsciiSafe(Some("euc-jp")),
            "EUCKR" => Encoding::AsciiSafe(Some("euc-kr")),
            "EUCCN" => Encoding::AsciiSafe(Some("gbk")),
            "EUCTW" | "MULEINTERNAL" => Encoding::AsciiSafe(None),
            "SJIS" | "SHIFTJIS" | "MSKANJI" | "WIN932" | "SHIFTJIS2004" => Encoding::ShiftJis,
            "BIG5" | "WIN950" => Encoding::Big5,
            "GBK" | "WIN936" => Encoding::Gbk,
            "UHC" | "WIN949" => Encoding::Uhc,
            "GB18030" => Encoding::Gb18030,
            _ => Encoding::Unsupported,
        }
    }

    /// The encoding named by MySQL's `character_set_client` (or the
    /// character set of the handshake's collation).
    pub fn from_mysql(name: &str) -> Encoding {
        match name.trim().to_ascii_lowercase().as_str() {
            "utf8mb4" | "utf8mb3" | "utf8" => Encoding::Utf8,
            "latin1" => Encoding::AsciiSafe(Some("windows-1252")),
            "latin2" => Encoding::AsciiSafe(Some("iso-8859-2")),
            "latin5" => Encoding::AsciiSafe(Some("iso-8859-9")),
            "latin7" => Encoding::AsciiSafe(Some("iso-8859-13")),
            "cp1250" => Encoding::AsciiSafe(Some("windows-1250")),
            "cp1251" => Encoding::AsciiSafe(Some("windows-1251")),
            "cp1256" => Encoding::AsciiSafe(Some("windows-1256")),
            "cp1257" => Encoding::AsciiSafe(Some("windows-1257")),
            "cp866" => Encoding::AsciiSafe(Some("ibm866")),
            "koi8r" => Encoding::AsciiSafe(Some("koi8-r")),
            "koi8u" => Encoding::AsciiSafe(Some("koi8-u")),
            "greek" => Encoding::AsciiSafe(Some("iso-8859-7")),
            "hebrew" => Encoding::AsciiSafe(Some("iso-8859-8")),
            "tis620" => Encoding::AsciiSafe(Some("windows-874")),
            "ujis" | "eucjpms" => Encoding::AsciiSafe(Some("euc-jp")),
            "euckr" => Encoding::AsciiSafe(Some("euc-kr")),
            "gb2312" => Encoding::AsciiSafe(Some("gbk")),
            "ascii" | "binary" | "dec8" | "hp8" | "cp850" | "cp852" | "keybcs2" | "macce"
            | "macroman" | "armscii8" | "geostd8" => Encoding::AsciiSafe(None),
            "sjis" | "cp932" => Encoding::ShiftJis,
            "big5" => Encoding::Big5,
            "gbk" => Encoding::Gbk,
            "gb18030" => Encoding::Gb18030,
            "swe7" | "ucs2" | "utf16" | "utf16le" | "utf32" => Encoding::NotAscii,
            _ => Encoding::Unsupported,
        }
    }

    /// Whether the byte boundaries of this set are followed exactly.
    pub fn is_followed(self) -> bool {
        !matches!(self, Encoding::Unsupported | Encoding::NotAscii)
    }
}

/// Why query bytes cannot be read as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

/// Decodes query bytes. Pure ASCII is returned borrowed under every
/// encoding except [`Encoding::NotAscii`].
pub fn decode(bytes: &[u8], enc: Encoding) -> Result<Cow<'_, str>, DecodeError> {
    if enc == Encoding::NotAscii {
        return Err(DecodeError(
            "the session's character set does not keep ASCII characters as they are".into(),
        ));
    }
    if bytes.is_ascii() {
        // Every byte is ASCII here; from_utf8 cannot fail.
        return std::str::from_utf8(bytes)
            .map(Cow::Borrowed)
            .map_err(|e| DecodeError(e.to_string()));
    }
    match enc {
        Encoding::Utf8 => std::str::from_utf8(bytes)
            .map(Cow::Borrowed)
            .map_err(|e| DecodeError(format!("not valid UTF-8 ({e})"))),
        Encoding::AsciiSafe(label) => Ok(Cow::Owned(ascii_safe(bytes, label))),
        Encoding::ShiftJis => multibyte(bytes, "Shift_JIS", sjis_len, "Shift-JIS"),
        Encoding::Big5 => multibyte(bytes, "Big5", big5_len, "Big5"),
        Encoding::Gbk => multibyte(bytes, "GBK", gbk_len, "GBK"),
        Encoding::Uhc => multibyte(bytes, "EUC-KR", uhc_len, "UHC"),
        Encoding::Gb18030 => multibyte(bytes, "gb18030", gb18030_len, "GB18030"),
        Encoding::Unsupported => Err(DecodeError(
            "non-ASCII text in a character set whose byte boundaries the interceptor does not follow".into(),
        )),
        Encoding::NotAscii => unreachable_not_ascii(),
    }
}

fn unreachable_not_ascii() -> Result<Cow<'static, str>, DecodeError> {
    Err(DecodeError("unsupported character set".into()))
}

/// Text for display when decoding failed: valid UTF-8 runs as they are,
/// every other byte as `\xNN`.
pub fn lossy_escaped(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

fn ascii_safe(bytes: &[u8], label: Option<&'static str>) -> String {
    if let Some(enc) = label.and_then(|l| encoding_rs::Encoding::for_label(l.as_bytes())) {
        let (text, _) = enc.decode_without_bom_handling(bytes);
        // Every ASCII byte maps to itself in these sets; a byte it cannot
        // map becomes U+FFFD, never ASCII.
        if text.len() >= bytes.iter().filter(|b| b.is_ascii()).count() {
            return text.into_owned();
        }
    }
    // Opaque high bytes: one non-ASCII character each.
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii() {
                b as char
            } else {
                char::from(b)
            }
        })
        .collect()
}

/// Length of the character starting at `b[0]` (≥ 0x80), or `None` when the
/// bytes there are not one complete valid character.
type CharLen = fn(&[u8]) -> Option<usize>;

fn multibyte(
    bytes: &[u8],
    label: &str,
    char_len: CharLen,
    name: &str,
) -> Result<Cow<'static, str>, DecodeError> {
    let enc = encoding_rs::Encoding::for_label(label.as_bytes());
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii() {
            if b == 0 {
                return Err(DecodeError("a NUL byte in the query".into()));
            }
            out.push(b as char);
            i += 1;
            continue;
        }
        let n = char_len(&bytes[i..]).ok_or_else(|| {
            let end = (i + 4).min(bytes.len());
            DecodeError(format!(
                "bytes {} at offset {i} are not a valid {name} character",
                bytes[i..end]
                    .iter()
                    .map(|b| format!("0x{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ))
        })?;
        let ch = &bytes[i..i + n];
        let mapped = enc.and_then(|e| {
            let (t, had_errors) = e.decode_without_bom_handling(ch);
            let mut cs = t.chars();
            match (cs.next(), cs.next(), had_errors) {
                (Some(c), None, false) if !c.is_ascii() => Some(c),
                _ => None,
            }
        });
        out.push(mapped.unwrap_or('\u{fffd}'));
        i += n;
    }
    Ok(Cow::Owned(out))
}

fn in_range(b: u8, lo: u8, hi: u8) -> bool {
    (lo..=hi).contains(&b)
}

/// Shift-JIS (both servers): single-byte half-width katakana 0xa1–0xdf;
/// lead 0x81–0x9f or 0xe0–0xfc with trail 0x40–0x7e or 0x80–0xfc.
fn sjis_len(b: &[u8]) -> Option<usize> {
    let lead = b[0];
    if in_range(lead, 0xa1, 0xdf) {
        return Some(1);
    }
    let trail = *b.get(1)?;
    let lead_ok = in_range(lead, 0x81, 0x9f) || in_range(lead, 0xe0, 0xfc);
    let trail_ok = in_range(trail, 0x40, 0x7e) || in_range(trail, 0x80, 0xfc);
    (lead_ok && trail_ok).then_some(2)
}

/// Big5 as MySQL reads it: lead 0xa1–0xf9, trail 0x40–0x7e or 0xa1–0xfe.
/// (PostgreSQL takes any high lead byte with any non-NUL trail as two
/// bytes; the stricter rule here refuses what the two would read apart.)
fn big5_len(b: &[u8]) -> Option<usize> {
    let trail = *b.get(1)?;
    (in_range(b[0], 0xa1, 0xf9) && (in_range(trail, 0x40, 0x7e) || in_range(trail, 0xa1, 0xfe)))
        .then_some(2)
}

/// GBK: lead 0x81–0xfe, trail 0x40–0x7e or 0x80–0xfe.
fn gbk_len(b: &[u8]) -> Option<usize> {
    let trail = *b.get(1)?;
    (in_range(b[0], 0x81, 0xfe) && (in_range(trail, 0x40, 0x7e) || in_range(trail, 0x80, 0xfe)))
        .then_some(2)
}

/// UHC: lead 0x81–0xfe, trail 0x41–0x5a, 0x61–0x7a or 0x81–0xfe.
fn uhc_len(b: &[u8]) -> Option<usize> {
    let trail = *b.get(1)?;
    (in_range(b[0], 0x81, 0xfe)
        && (in_range(trail, 0x41, 0x5a)
            || in_range(trail, 0x61, 0x7a)
            || in_range(trail, 0x81, 0xfe)))
    .then_some(2)
}

/// GB18030: two bytes (lead 0x81–0xfe, trail 0x40–0x7e or 0x80–0xfe) or
/// four (lead, 0x30–0x39, 0x81–0xfe, 0x30–0x39).
fn gb18030_len(b: &[u8]) -> Option<usize> {
    if !in_range(b[0], 0x81, 0xfe) {
        return None;
    }
    let second = *b.get(1)?;
    if in_range(second, 0x30, 0x39) {
        let (third, fourth) = (*b.get(2)?, *b.get(3)?);
        return (in_range(third, 0x81, 0xfe) && in_range(fourth, 0x30, 0x39)).then_some(4);
    }
    (in_range(second, 0x40, 0x7e) || in_range(second, 0x80, 0xfe)).then_some(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_encodings() {
        assert_eq!(Encoding::from_postgres("UTF8"), Encoding::Utf8);
        assert_eq!(Encoding::from_postgres("sjis"), Encoding::ShiftJis);
        assert_eq!(
            Encoding::from_postgres("SHIFT_JIS_2004"),
            Encoding::ShiftJis
        );
        assert_eq!(Encoding::from_postgres("BIG5"), Encoding::Big5);
        assert_eq!(Encoding::from_postgres("gb18030"), Encoding::Gb18030);
        assert_eq!(Encoding::from_postgres("JOHAB"), Encoding::Unsupported);
        assert!(matches!(
            Encoding::from_postgres("LATIN1"),
            Encoding::AsciiSafe(_)
        ));
        assert_eq!(Encoding::from_mysql("utf8mb4"), Encoding::Utf8);
        assert_eq!(Encoding::from_mysql("cp932"), Encoding::ShiftJis);
        assert_eq!(Encoding::from_mysql("GBK"), Encoding::Gbk);
        assert_eq!(Encoding::from_mysql("swe7"), Encoding::NotAscii);
        assert_eq!(Encoding::from_mysql("klingon"), Encoding::Unsupported);
    }

    #[test]
    fn a_trailing_backslash_byte_stays_inside_its_character() {
        // SJIS 0x95 0x5c is one character (表); the 0x5c is not a backslash.
        let t = decode(b"SELECT '\x95\x5c'", Encoding::ShiftJis).unwrap();
        assert_eq!(t, "SELECT '表'");
        // GBK 0xbf 0x5c: one character.
        let t = decode(b"'\xbf\x5c'", Encoding::Gbk).unwrap();
        assert!(!t.contains('\\'), "{t}");
        assert_eq!(t.chars().count(), 3);
        // Big5 0xa5 0x5c (功).
        let t = decode(b"'\xa5\x5c'", Encoding::Big5).unwrap();
        assert_eq!(t, "'功'");
    }

    #[test]
    fn incomplete_or_invalid_sequences_are_errors() {
        // A lead byte followed by a quote.
        assert!(decode(b"'\x95''", Encoding::ShiftJis).is_err());
        // Big5 lead byte outside MySQL's range (0x81) with a backslash.
        assert!(decode(b"'\x81\x5c'", Encoding::Big5).is_err());
        // Truncated at the end.
        assert!(decode(b"'\xbf", Encoding::Gbk).is_err());
        assert!(decode(b"\x81\x30\x81", Encoding::Gb18030).is_err());
        assert!(decode(b"\xff", Encoding::Utf8).is_err());
        assert!(decode(b"\xe9", Encoding::Unsupported).is_err());
        assert!(decode(b"SELECT 1", Encoding::NotAscii).is_err());
        // Pure ASCII is fine in any supported set.
        assert_eq!(
            decode(b"SELECT 1", Encoding::Unsupported).unwrap(),
            "SELECT 1"
        );
    }

    #[test]
    fn four_byte_gb18030_and_kana() {
        let t = decode(b"\x81\x30\x81\x30x", Encoding::Gb18030).unwrap();
        assert_eq!(t.chars().count(), 2);
        let t = decode(b"\xb1'", Encoding::ShiftJis).unwrap();
        assert_eq!(t.chars().count(), 2);
        assert!(t.ends_with('\''));
    }

    #[test]
    fn single_byte_sets_never_produce_ascii_from_high_bytes() {
        let t = decode(b"SELECT '\xe9\x5c'", Encoding::from_postgres("LATIN1")).unwrap();
        assert_eq!(t, "SELECT 'é\\'");
        let t = decode(b"\x80\x81", Encoding::AsciiSafe(None)).unwrap();
        assert!(t.chars().all(|c| !c.is_ascii()));
    }

    #[test]
    fn lossy_display_escapes_bad_bytes() {
        assert_eq!(lossy_escaped(b"ab\xffc"), "ab\\xffc");
    }
}
