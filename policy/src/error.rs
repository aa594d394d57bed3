//! Errors reported while loading a policy file.

use std::ops::Range;

/// A policy file error, located in the source text.
///
/// `Display` renders `FILE:LINE:COL: message` (line and column 1-based; the
/// column counts characters, not bytes), the shape editors and CI logs
/// understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct PolicyError {
    /// The file name given to [`Policy::parse`](crate::Policy::parse).
    pub file: String,
    /// 1-based line of the offending key or value.
    pub line: usize,
    /// 1-based column (in characters) of the offending key or value.
    pub column: usize,
    /// What is wrong, without the location prefix.
    pub message: String,
}

impl PolicyError {
    /// Builds an error located at byte offset `span.start` of `text`.
    pub(crate) fn at(file: &str, text: &str, span: Option<Range<usize>>, message: String) -> Self {
        let (line, column) = match span {
            Some(span) => line_col(text, span.start),
            None => (1, 1),
        };
        PolicyError {
            file: file.to_owned(),
            line,
            column,
            message,
        }
    }
}

/// 1-based (line, column) of byte offset `offset` in `text`; the column is
/// counted in characters. Offsets past the end or inside a character are
/// clamped.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// An error found while compiling one value; located by the caller.
#[derive(Debug)]
pub(crate) struct Located {
    pub span: Range<usize>,
    pub message: String,
}

impl Located {
    pub(crate) fn new(span: Range<usize>, message: impl Into<String>) -> Self {
        Located {
            span,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one_and_in_chars() {
        let text = "ab\ncdé\nf";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 2), (1, 3));
        assert_eq!(line_col(text, 3), (2, 1));
        assert_eq!(line_col(text, 7), (2, 4)); // after 'é' (2 bytes)
        assert_eq!(line_col(text, 6), (2, 3)); // inside 'é': clamped back
        assert_eq!(line_col(text, 100), (3, 2));
    }

    #[test]
    fn display_is_file_line_col_message() {
        let e = PolicyError::at("p.toml", "a\nbc", Some(3..4), "bad".into());
        assert_eq!(e.to_string(), "p.toml:2:2: bad");
    }
}
