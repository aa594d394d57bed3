//! A small glob matcher: `*`, `?`, `[...]` and `\` escapes, compiled to an
//! anchored regular expression.
//!
//! Unlike path globs, `*` also matches `/` and `.`: the subjects here are
//! cgroup paths, command lines, host names and SQL names, and a pattern such
//! as `/system.slice/*` is meant to cover every descendant.

use regex::Regex;
use std::fmt;

/// One compiled glob pattern.
#[derive(Clone)]
pub struct Glob {
    pattern: String,
    regex: Regex,
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.pattern)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

/// Why a glob pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    /// `[` without its closing `]`.
    #[error("unclosed character class (missing `]`)")]
    UnclosedClass,
    /// A `\` at the end of the pattern.
    #[error("dangling escape (`\\` at the end of the pattern)")]
    DanglingEscape,
    /// A class range such as `[z-a]`.
    #[error("invalid character range {0}-{1}")]
    BadRange(char, char),
    /// The pattern was empty.
    #[error("empty pattern")]
    Empty,
}

impl Glob {
    /// Compiles `pattern`. With `case_insensitive`, letters match in either
    /// case (Unicode simple case folding).
    pub fn new(pattern: &str, case_insensitive: bool) -> Result<Glob, GlobError> {
        if pattern.is_empty() {
            return Err(GlobError::Empty);
        }
        let mut re = String::with_capacity(pattern.len() * 2 + 8);
        re.push_str(if case_insensitive { "(?si)^" } else { "(?s)^" });
        let chars: Vec<char> = pattern.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' => {
                    // Collapse runs of `*`: `**` means the same as `*`.
                    while i + 1 < chars.len() && chars[i + 1] == '*' {
                        i += 1;
                    }
                    re.push_str(".*");
                }
                '?' => re.push('.'),
                '\\' => {
                    let next = chars.get(i + 1).ok_or(GlobError::DanglingEscape)?;
                    push_escaped(&mut re, *next);
                    i += 1;
                }
                '[' => i = class(&chars, i, &mut re)?,
                c => push_escaped(&mut re, c),
            }
            i += 1;
        }
        re.push('$');
        // Every construct above is escaped or validated, so a compile error
        // here would be a bug; still report it rather than panic.
        let regex = Regex::new(&re).map_err(|_| GlobError::UnclosedClass)?;
        Ok(Glob {
            pattern: pattern.to_owned(),
            regex,
        })
    }

    /// Whether the whole of `subject` matches the pattern.
    pub fn is_match(&self, subject: &str) -> bool {
        self.regex.is_match(subject)
    }

    /// The anchored regular expression the pattern compiles to.
    pub fn regex_str(&self) -> &str {
        self.regex.as_str()
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }
}

fn push_escaped(re: &mut String, c: char) {
    let mut buf = [0u8; 4];
    re.push_str(&regex::escape(c.encode_utf8(&mut buf)));
}

/// Translates the class starting at `chars[start] == '['`; returns the index
/// of its closing `]`.
fn class(chars: &[char], start: usize, re: &mut String) -> Result<usize, GlobError> {
    let mut i = start + 1;
    re.push('[');
    if matches!(chars.get(i), Some('!' | '^')) {
        re.push('^');
        i += 1;
    }
    let first = i;
    let mut members = 0usize;
    loop {
        let c = *chars.get(i).ok_or(GlobError::UnclosedClass)?;
        if c == ']' && i > first {
            break;
        }
        let c = if c == '\\' {
            i += 1;
            *chars.get(i).ok_or(GlobError::DanglingEscape)?
        } else {
            c
        };
        // A range `a-z` (a `-` first or last is a literal).
        if chars.get(i + 1) == Some(&'-') && chars.get(i + 2).is_some_and(|&n| n != ']') {
            let mut end_idx = i + 2;
            let mut end = chars[end_idx];
            if end == '\\' {
                end_idx += 1;
                end = *chars.get(end_idx).ok_or(GlobError::DanglingEscape)?;
            }
            if end < c {
                return Err(GlobError::BadRange(c, end));
            }
            push_class_member(re, c);
            re.push('-');
            push_class_member(re, end);
            i = end_idx + 1;
        } else {
            push_class_member(re, c);
            i += 1;
        }
        members += 1;
    }
    debug_assert!(members > 0);
    re.push(']');
    Ok(i)
}

fn push_class_member(re: &mut String, c: char) {
    if c.is_alphanumeric() {
        re.push(c);
    } else {
        // Inside a class every non-alphanumeric member is escaped so that
        // regex class-set syntax (`&&`, `--`, `~~`, nested `[`) never applies.
        // `regex::escape` leaves some punctuation unescaped; escape all ASCII
        // punctuation explicitly (always allowed by the regex crate).
        if c.is_ascii_punctuation() {
            re.push('\\');
            re.push(c);
        } else {
            re.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        Glob::new(p, false).unwrap().is_match(s)
    }

    #[test]
    fn table() {
        let cases: &[(&str, &str, bool)] = &[
            ("abc", "abc", true),
            ("abc", "abcd", false),
            ("abc", "ABC", false),
            ("*", "", true),
            ("*", "anything/at all", true),
            ("/system.slice/*", "/system.slice/a.service/job-1", true),
            ("/system.slice/*", "/user.slice/a", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("a?c", "a/c", true),
            ("[ab]x", "bx", true),
            ("[ab]x", "cx", false),
            ("[!ab]x", "cx", true),
            ("[^ab]x", "ax", false),
            ("[a-c]", "b", true),
            ("[a-c]", "d", false),
            ("[]]", "]", true),
            ("[!]]", "a", true),
            ("[-a]", "-", true),
            ("[a-]", "-", true),
            ("[&&]", "&", true),
            ("[\\]]", "]", true),
            ("a\\*", "a*", true),
            ("a\\*", "ab", false),
            ("a.b", "axb", false),
            ("a.b", "a.b", true),
            ("(x)|y+", "(x)|y+", true),
            ("**", "a", true),
            ("é*", "éa", true),
            ("git push*--force*", "git push origin main --force", true),
        ];
        for (p, s, want) in cases {
            assert_eq!(m(p, s), *want, "glob {p:?} on {s:?}");
        }
    }

    #[test]
    fn case_insensitive() {
        let g = Glob::new("pg_*", true).unwrap();
        assert!(g.is_match("PG_READ_FILE"));
        assert!(g.is_match("pg_read_file"));
        assert!(!Glob::new("pg_*", false).unwrap().is_match("PG_X"));
    }

    #[test]
    fn errors() {
        assert_eq!(
            Glob::new("[abc", false).unwrap_err(),
            GlobError::UnclosedClass
        );
        assert_eq!(Glob::new("[", false).unwrap_err(), GlobError::UnclosedClass);
        assert_eq!(
            Glob::new("[]", false).unwrap_err(),
            GlobError::UnclosedClass
        );
        assert_eq!(
            Glob::new("ab\\", false).unwrap_err(),
            GlobError::DanglingEscape
        );
        assert_eq!(
            Glob::new("[z-a]", false).unwrap_err(),
            GlobError::BadRange('z', 'a')
        );
        assert_eq!(Glob::new("", false).unwrap_err(), GlobError::Empty);
    }
}
