//! Masking of SQL text for records and approval requests: detectors run
//! on each literal (and each comment) on its own, never across the
//! statement's structure.
//!
//! Run over the whole text, a detector could be steered by the workload: a
//! fake `-----BEGIN PRIVATE KEY-----` in a comment, with no END line, makes
//! the private-key detector blank everything after it — including the
//! `DROP TABLE` an approver needs to see. Here the text is read the way the
//! server reads it ([`crate::sql::Lexing`]), and each string or numeric
//! literal and each comment is masked as a unit; keywords, identifiers and
//! operators are never touched. Text the lexer cannot read to the end is
//! masked as one unit from where reading stopped.

use super::ActiveMasks;
use crate::sql::lex::{self, Lexing, Tok};
use std::borrow::Cow;

impl ActiveMasks {
    /// Masks the literals and comments of SQL `text` one by one.
    pub fn mask_sql<'a>(&self, text: &'a str, lexing: &Lexing) -> Cow<'a, str> {
        if self.detectors.is_empty() {
            return Cow::Borrowed(text);
        }
        // Nothing can fire: the common case costs one scan.
        if self.detectors_fired(text).is_empty() {
            return Cow::Borrowed(text);
        }
        let tokens = lex::lex_lenient(text, lexing);
        let mut out = String::with_capacity(text.len());
        let mut copied = 0;
        for t in &tokens {
            if !matches!(
                t.tok,
                Tok::Str { .. } | Tok::Number | Tok::Comment | Tok::QIdent(_)
            ) {
                continue;
            }
            let piece = &text[t.range.clone()];
            if let Cow::Owned(masked) = self.mask_text(piece) {
                out.push_str(&text[copied..t.range.start]);
                out.push_str(&masked);
                copied = t.range.end;
            }
        }
        if copied == 0 {
            return Cow::Borrowed(text);
        }
        out.push_str(&text[copied..]);
        Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::mask::{ActiveMasks, DetectorSet};
    use crate::sql::Lexing;

    fn masks() -> ActiveMasks {
        ActiveMasks::with_detectors(DetectorSet::all())
    }

    #[test]
    fn a_fake_key_in_a_comment_cannot_hide_the_statement() {
        let sql = "/* -----BEGIN PRIVATE KEY----- */ DROP TABLE users";
        let m = masks().mask_sql(sql, &Lexing::postgres());
        assert!(m.ends_with("DROP TABLE users"), "{m}");
        assert!(!m.contains("BEGIN PRIVATE KEY"), "{m}");
        let sql = "-- -----BEGIN RSA PRIVATE KEY-----\nDELETE FROM t";
        let m = masks().mask_sql(sql, &Lexing::mysql());
        assert!(m.ends_with("\nDELETE FROM t"), "{m}");
    }

    #[test]
    fn literals_are_masked_each_on_its_own() {
        let sql = "INSERT INTO p VALUES ('bob@example.com', 4111111111111111, 'x')";
        let m = masks().mask_sql(sql, &Lexing::postgres());
        assert_eq!(
            m,
            "INSERT INTO p VALUES ('<masked:email>', <masked:credit_card>, 'x')"
        );
        // A whole key inside one literal is masked with it.
        let sql = "SELECT '-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----', 1";
        let m = masks().mask_sql(sql, &Lexing::postgres());
        assert!(m.starts_with("SELECT '<masked:private_key>'"), "{m}");
        assert!(m.ends_with(", 1"), "{m}");
    }

    #[test]
    fn unreadable_text_is_masked_from_where_reading_stopped() {
        let sql = "DROP TABLE x; SELECT 'bob@example.com";
        let m = masks().mask_sql(sql, &Lexing::postgres());
        assert_eq!(m, "DROP TABLE x; SELECT '<masked:email>");
    }

    #[test]
    fn clean_text_is_borrowed() {
        let m = masks().mask_sql("SELECT 1", &Lexing::postgres());
        assert!(matches!(m, std::borrow::Cow::Borrowed(_)));
    }
}
