//! Statement shapes: a normalised form of SQL text used as a cache key and
//! for "approve this statement shape".

use super::Dialect;
use super::split::tokens;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::Token;

/// The normalised shape of `sql`: literals and bind placeholders replaced by
/// `?`, comments dropped, whitespace collapsed to single spaces, keywords
/// lowercased, trailing `;` removed. Identifiers keep their case and quotes.
///
/// Never fails: text the tokenizer rejects is returned with its whitespace
/// collapsed.
pub fn shape(sql: &str, dialect: Dialect) -> String {
    let toks = match tokens(sql, dialect) {
        Ok(t) => t,
        Err(_) => return collapse(sql),
    };
    let mut out = String::with_capacity(sql.len());
    let mut space = false;
    for (t, _) in &toks {
        let piece: std::borrow::Cow<'_, str> = match &t.token {
            Token::Whitespace(_) => {
                space = true;
                continue;
            }
            Token::EOF => continue,
            Token::Word(w) if w.quote_style.is_none() && w.keyword != Keyword::NoKeyword => {
                w.value.to_lowercase().into()
            }
            Token::Number(..) | Token::SingleQuotedString(_) | Token::DoubleQuotedString(_)
                if is_literal(&t.token, dialect) =>
            {
                "?".into()
            }
            Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::Placeholder(_)
            | Token::CopyData { .. } => "?".into(),
            other => other.to_string().into(),
        };
        if space && !out.is_empty() {
            out.push(' ');
        }
        space = false;
        out.push_str(&piece);
    }
    while out.ends_with(';') || out.ends_with(' ') {
        out.pop();
    }
    out
}

fn is_literal(t: &Token, dialect: Dialect) -> bool {
    match t {
        // In PostgreSQL "x" is an identifier, in MySQL (default mode) a string.
        Token::DoubleQuotedString(_) => dialect == Dialect::Mysql,
        _ => true,
    }
}

fn collapse(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}
