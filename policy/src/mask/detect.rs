//! Sensitive-value detectors: a byte prefilter, one `RegexSet` pass, then a
//! per-detector regex whose candidates are validated (checksums, ranges,
//! structure) before they are replaced.

use super::{Detector, DetectorSet};
use regex::{Regex, RegexSet};
use std::borrow::Cow;
use std::ops::Range;
use std::sync::LazyLock;

/// Detection order: earlier detectors win overlapping spans (a PEM block
/// contains base64 that could look like anything; an IBAN contains digit
/// runs a phone pattern would take).
const PRIORITY: [Detector; 8] = [
    Detector::PrivateKey,
    Detector::Jwt,
    Detector::AwsAccessKey,
    Detector::Email,
    Detector::Iban,
    Detector::CreditCard,
    Detector::UsSsn,
    Detector::Phone,
];

fn pattern(d: Detector) -> &'static str {
    match d {
        Detector::PrivateKey => r"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY)-----",
        Detector::Jwt => r"(?-u:\b)eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*",
        Detector::AwsAccessKey => r"(?-u:\b)(?:AKIA|ASIA)[A-Z2-7]{16}(?-u:\b)",
        Detector::Email => {
            // Label lengths and hyphens are checked by `email`, which keeps
            // this automaton small.
            r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?-u:\b)"
        }
        Detector::Iban => r"(?-u:\b)[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}(?-u:\b)",
        // Any run of digit groups; `credit_card_span` picks the card in it.
        Detector::CreditCard => r"(?-u:\b)[0-9]+(?:[ -][0-9]+)*(?-u:\b)",
        Detector::UsSsn => {
            r"(?-u:\b)(?:[0-9]{3}-[0-9]{2}-[0-9]{4}|[0-9]{3} [0-9]{2} [0-9]{4})(?-u:\b)"
        }
        Detector::Phone => concat!(
            // E.164 / international: + then digits and separators;
            // `phone_intl_span` checks the layout and the digit count.
            r"\+[1-9][0-9 .()-]*[0-9]",
            // North American: (415) 555-2671, 415-555-2671, 1-800-555-0199.
            r"|(?:(?-u:\b)1[ .-])?(?:\([0-9]{3}\) ?|(?-u:\b)[0-9]{3}[ .-])[0-9]{3}[ .-][0-9]{4}(?-u:\b)",
            // National with trunk prefix 0: 020 7946 0958, 01 23 45 67 89.
            r"|(?-u:\b)0[0-9]{1,4}(?:[ -][0-9]{2,4}){2,4}(?-u:\b)",
        ),
    }
}

struct Engine {
    set: RegexSet,
    /// Indexed by `Detector as usize`.
    regexes: Vec<Regex>,
}

static ENGINE: LazyLock<Option<Engine>> = LazyLock::new(|| {
    let pats: Vec<&str> = Detector::ALL.iter().map(|d| pattern(*d)).collect();
    let set = RegexSet::new(&pats).ok()?;
    let regexes = pats
        .iter()
        .map(|p| Regex::new(p))
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    Some(Engine { set, regexes })
});

/// Cheap necessary conditions for each detector, from one pass over the
/// bytes (plus a pass over digit groups when there are enough digits). No
/// regex runs for a value that fails them all, which is the common case.
pub(super) fn prefilter(text: &str, enabled: DetectorSet) -> DetectorSet {
    let b = text.as_bytes();
    let mut out = DetectorSet::EMPTY;
    if b.len() < 6 {
        return out;
    }
    let mut digits = 0usize;
    let (mut at, mut email, mut iban, mut aws, mut pem, mut jwt, mut plus) =
        (false, false, false, false, false, false, false);
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'0'..=b'9' => {
                digits += 1;
                // `[A-Z][A-Z][0-9][0-9]`: an IBAN's country and check digits.
                if i >= 3
                    && b[i - 1].is_ascii_digit()
                    && b[i - 2].is_ascii_uppercase()
                    && b[i - 3].is_ascii_uppercase()
                {
                    iban = true;
                }
            }
            b'@' => at = true,
            b'.' => email |= at,
            b'+' => plus |= b.get(i + 1).is_some_and(u8::is_ascii_digit),
            b'A' => {
                aws |= b.len() >= i + 20 && matches!(&b[i + 1..i + 4], b"KIA" | b"SIA");
            }
            b'-' => pem |= b[i..].starts_with(b"-----BEGIN "),
            b'e' => jwt |= b[i..].starts_with(b"eyJ"),
            _ => {}
        }
    }
    let mut want = |d: Detector, cond: bool| {
        if cond && enabled.contains(d) {
            out.insert(d);
        }
    };
    want(Detector::Email, email);
    want(Detector::Iban, iban && b.len() >= 15);
    want(Detector::AwsAccessKey, aws);
    want(Detector::PrivateKey, pem);
    want(Detector::Jwt, jwt);
    if digits >= 9 {
        let g = digit_groups(b, plus);
        want(Detector::CreditCard, g.card);
        want(Detector::UsSsn, g.ssn);
        want(Detector::Phone, g.phone);
    }
    out
}

/// What the digit groups of a value could be.
#[derive(Default)]
struct GroupShapes {
    card: bool,
    ssn: bool,
    phone: bool,
}

/// Walks the maximal digit runs ("groups") of `b`. Groups joined by exactly
/// one space or dash form a strict chain (cards, SSNs, national phone
/// numbers); groups joined by one or two of ` .-()` form a loose chain
/// (phone numbers).
fn digit_groups(b: &[u8], plus: bool) -> GroupShapes {
    let mut out = GroupShapes::default();
    let mut strict_lens = [0usize; 3];
    let mut loose_sum = 0usize;
    let mut loose_lens = [0usize; 3];
    // Groups seen after a group that starts with 0 (national trunk prefix).
    let mut after_zero: Option<(usize, usize)> = None;
    let mut since_card: Option<usize> = None;
    let mut prev_end: Option<usize> = None;
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let len = i - start;
        let gap = prev_end.map(|e| &b[e..start]);
        let strict = matches!(gap, Some([b' ' | b'-']));
        let loose = gap
            .is_some_and(|g| (1..=2).contains(&g.len()) && g.iter().all(|c| b" .-()".contains(c)));
        strict_lens = if strict {
            [strict_lens[1], strict_lens[2], len]
        } else {
            [0, 0, len]
        };
        if loose {
            loose_sum += len;
            loose_lens = [loose_lens[1], loose_lens[2], len];
        } else {
            loose_sum = len;
            loose_lens = [0, 0, len];
        }
        // Digits since the first group of the strict chain that could start
        // a card number (first digit 2–6).
        let card_start = (b'2'..=b'6').contains(&b[start]);
        since_card = match since_card {
            Some(d) if strict => Some(d + len),
            _ if card_start => Some(len),
            _ => None,
        };
        // (groups, digits) since a group that starts with 0.
        after_zero = match after_zero {
            Some((n, d)) if strict => Some((n + 1, d + len)),
            _ if b[start] == b'0' && (2..=5).contains(&len) => Some((0, len)),
            _ => None,
        };
        out.card |= since_card.is_some_and(|d| d >= 13);
        out.ssn |= strict_lens == [3, 2, 4];
        out.phone |= (plus && loose_sum >= 10)
            || loose_lens == [3, 3, 4]
            || after_zero.is_some_and(|(n, d)| n >= 2 && d >= 10);
        prev_end = Some(i);
    }
    out
}

/// Replaces every validated match of the `enabled` detectors with
/// `<masked:NAME>`. Returns the text (borrowed when nothing matched) and
/// the detectors that fired.
pub(crate) fn mask<'a>(text: &'a str, enabled: DetectorSet) -> (Cow<'a, str>, DetectorSet) {
    let (spans, fired) = find(text, enabled);
    if spans.is_empty() {
        return (Cow::Borrowed(text), fired);
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (range, d) in spans {
        out.push_str(&text[last..range.start]);
        out.push_str("<masked:");
        out.push_str(d.as_str());
        out.push('>');
        last = range.end;
    }
    out.push_str(&text[last..]);
    (Cow::Owned(out), fired)
}

/// Validated, non-overlapping spans, sorted by start.
pub(crate) fn find(
    text: &str,
    enabled: DetectorSet,
) -> (Vec<(Range<usize>, Detector)>, DetectorSet) {
    let mut spans: Vec<(Range<usize>, Detector)> = Vec::new();
    let mut fired = DetectorSet::EMPTY;
    let candidates = prefilter(text, enabled);
    if candidates.is_empty() {
        return (spans, fired);
    }
    let Some(engine) = ENGINE.as_ref() else {
        return (spans, fired);
    };
    // One RegexSet pass narrows several candidates at once; a single
    // candidate goes straight to its own regex.
    let hits = (candidates.len() > 1).then(|| engine.set.matches(text));
    for d in PRIORITY {
        if !candidates.contains(d) || hits.as_ref().is_some_and(|h| !h.matched(d as usize)) {
            continue;
        }
        let re = &engine.regexes[d as usize];
        // Search only the text not claimed by an earlier detector, each gap
        // on its own (its edges act like the `<masked:…>` that will replace
        // the neighbours), so a candidate that overlapped a claimed span is
        // found again in what is left of it.
        let mut found: Vec<(Range<usize>, Detector)> = Vec::new();
        for gap in gaps(&spans, text.len()) {
            // Candidates are validated within the slice `base..gap.end`: its
            // edges are the context a value has once its neighbours are
            // masked, which keeps masking idempotent. After a match the
            // slice restarts at the match's end for the same reason.
            let mut base = gap.start;
            let mut pos = 0;
            while base < gap.end {
                let hay = &text[base..gap.end];
                let Some(m) = re.find_at(hay, pos) else {
                    break;
                };
                if d == Detector::CreditCard {
                    // A run of digit groups may hold several cards.
                    for rel in cards_in_run(hay, m.range()) {
                        found.push((base + rel.start..base + rel.end, d));
                    }
                    pos = m.end().max(pos + 1);
                } else {
                    match validate(d, hay, m.range()) {
                        Some(rel) => {
                            let range = base + rel.start..base + rel.end;
                            // Gaps exclude earlier detectors' spans, and `base`
                            // only moves forward: checking the last match is
                            // enough to keep spans disjoint.
                            if found.last().is_none_or(|(l, _)| l.end <= range.start) {
                                found.push((range.clone(), d));
                            }
                            base = range.end.max(base + 1);
                            pos = 0;
                        }
                        None => pos = m.end().max(pos + 1),
                    }
                }
                while base < gap.end && !text.is_char_boundary(base) {
                    base += 1;
                }
                if base + pos > gap.end {
                    break;
                }
                let hay_len = gap.end - base;
                while pos < hay_len && !text.is_char_boundary(base + pos) {
                    pos += 1;
                }
            }
        }
        if !found.is_empty() {
            fired.insert(d);
            spans.extend(found);
            spans.sort_by_key(|(r, _)| r.start);
        }
    }
    (spans, fired)
}

/// The parts of `0..len` not covered by the sorted, disjoint `spans`.
fn gaps(spans: &[(Range<usize>, Detector)], len: usize) -> Vec<Range<usize>> {
    let mut out = Vec::with_capacity(spans.len() + 1);
    let mut at = 0;
    for (r, _) in spans {
        if r.start > at {
            out.push(at..r.start);
        }
        at = at.max(r.end);
    }
    if at < len {
        out.push(at..len);
    }
    out
}

/// Checks one regex candidate; returns the span to mask (which may be
/// narrower or, for PEM blocks, wider than the candidate).
fn validate(d: Detector, text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let s = &text[r.clone()];
    let ok = match d {
        Detector::PrivateKey => return pem_block(text, r),
        Detector::Jwt => jwt(s),
        Detector::AwsAccessKey => true,
        Detector::Email => email(s),
        Detector::Iban => return iban(s).map(|len| r.start..r.start + len),
        Detector::Phone if s.starts_with('+') => {
            let len = phone_intl_len(s)?;
            let r = r.start..r.start + len;
            return (!joined(text, &r, |c| c.is_ascii_alphanumeric() || c == b'+')).then_some(r);
        }
        Detector::CreditCard => return cards_in_run(text, r).into_iter().next(),
        Detector::UsSsn => ssn(s) && !joined(text, &r, |c| c.is_ascii_digit() || c == b'-'),
        Detector::Phone => {
            phone(s) && !joined(text, &r, |c| c.is_ascii_alphanumeric() || c == b'+')
        }
    };
    ok.then_some(r)
}

/// Whether the text around `r` makes the candidate part of a larger token:
/// a `part` byte right before or after it, or a `-`/`.` followed by one
/// (`12-078-05-1120`, `078-05-1120-7`).
fn joined(text: &str, r: &Range<usize>, part: impl Fn(u8) -> bool) -> bool {
    let b = text.as_bytes();
    let at = |i: Option<usize>| i.and_then(|i| b.get(i)).copied();
    let is_part = |c: Option<u8>| c.is_some_and(&part);
    let sep = |c: Option<u8>| matches!(c, Some(b'-' | b'.'));
    let (before, before2) = (at(r.start.checked_sub(1)), at(r.start.checked_sub(2)));
    let (after, after2) = (at(Some(r.end)), at(r.end.checked_add(1)));
    is_part(before)
        || is_part(after)
        || (sep(before) && is_part(before2))
        || (sep(after) && is_part(after2))
}

/// `-----BEGIN X PRIVATE KEY-----` through the matching END line; to the
/// end of the text when the END line is missing (a truncated key is still
/// a key).
fn pem_block(text: &str, begin: Range<usize>) -> Option<Range<usize>> {
    let header = &text[begin.clone()];
    let label = header.strip_prefix("-----BEGIN ")?.strip_suffix("-----")?;
    let end_marker = format!("-----END {label}-----");
    let rest = &text[begin.end..];
    let end = match rest.find(&end_marker) {
        Some(i) => begin.end + i + end_marker.len(),
        None => text.len(),
    };
    Some(begin.start..end)
}

fn b64url_value(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => (c - b'A') as u32,
        b'a'..=b'z' => (c - b'a') as u32 + 26,
        b'0'..=b'9' => (c - b'0') as u32 + 52,
        b'-' => 62,
        b'_' => 63,
        _ => return None,
    })
}

/// Unpadded base64url.
pub(crate) fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0u32;
    for &c in s.as_bytes() {
        acc = (acc << 6) | b64url_value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Three base64url parts; the header decodes to a JSON object with "alg";
/// the payload decodes.
fn jwt(s: &str) -> bool {
    let mut parts = s.split('.');
    let (Some(h), Some(p), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Some(header) = b64url_decode(h) else {
        return false;
    };
    if b64url_decode(p).is_none() {
        return false;
    }
    let Ok(header) = std::str::from_utf8(&header) else {
        return false;
    };
    let header = header.trim();
    if !(header.starts_with('{') && header.ends_with('}')) {
        return false;
    }
    // `"alg"` used as a key: followed by optional whitespace and `:`.
    header
        .match_indices("\"alg\"")
        .any(|(i, m)| header[i + m.len()..].trim_start().starts_with(':'))
}

/// Local part and domain checks beyond the regex.
fn email(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    let labels_ok = domain
        .split('.')
        .all(|l| (1..=63).contains(&l.len()) && !l.starts_with('-') && !l.ends_with('-'));
    let tld_ok = domain
        .rsplit('.')
        .next()
        .is_some_and(|t| (2..=63).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_alphabetic()));
    !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && labels_ok
        && tld_ok
        && domain.len() <= 253
        && s.len() <= 254
}

/// `+` phone numbers: digits in groups separated by at most two of
/// ` .-()`, balanced parentheses, 10–15 digits. Returns the byte length of
/// the number: trailing groups beyond 15 digits (`+1 415 555 2671 2024 7`)
/// are left out, and the number stops before a run of 3+ separators.
fn phone_intl_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut digits = 0usize;
    let mut seps = 0usize;
    let mut open = 0i32;
    // (byte end, digits, parentheses balanced) at each group end.
    let mut best: Option<usize> = None;
    let mut i = 1; // after '+'
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_digit() {
            digits += 1;
            seps = 0;
            let group_end = b.get(i + 1).is_none_or(|n| !n.is_ascii_digit());
            if group_end {
                if digits > 15 {
                    break;
                }
                if digits >= 10 && open == 0 {
                    best = Some(i + 1);
                }
            }
        } else {
            seps += 1;
            if seps > 2 {
                break;
            }
            match c {
                b'(' => open += 1,
                b')' => {
                    open -= 1;
                    if open < 0 {
                        break;
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    best
}

fn digits_only(s: &str) -> Vec<u8> {
    s.bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect()
}

pub(crate) fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &d) in digits.iter().rev().enumerate() {
        let mut v = d as u32;
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// The card numbers inside a run of digit groups: leftmost-longest runs of
/// whole groups that are valid card numbers (13–19 digits, first digit 2–6
/// as used by the card networks, not one repeated digit, Luhn checksum),
/// each search resuming after the previous card. `4111 1111 1111 1111 123`
/// holds one card in its first four groups. Linear in the run's length.
fn cards_in_run(text: &str, r: Range<usize>) -> Vec<Range<usize>> {
    // Digit groups (byte ranges) separated by single spaces or dashes.
    let b = text.as_bytes();
    let mut groups: Vec<Range<usize>> = Vec::new();
    let mut i = r.start;
    while i < r.end {
        let start = i;
        while i < r.end && b[i].is_ascii_digit() {
            i += 1;
        }
        if i > start {
            groups.push(start..i);
        }
        i += 1; // separator
    }
    let mut cards = Vec::new();
    let mut first = 0;
    while first < groups.len() {
        match card_from(b, &groups[first..]) {
            Some(used) => {
                cards.push(groups[first].start..groups[first + used - 1].end);
                first += used;
            }
            None => first += 1,
        }
    }
    cards
}

/// The number of leading `groups` forming the longest valid card number
/// that starts at the first group, if any.
fn card_from(b: &[u8], groups: &[Range<usize>]) -> Option<usize> {
    let first = groups.first()?;
    if !(b'2'..=b'6').contains(&b[first.start]) {
        return None;
    }
    let mut digits = [0u8; 19];
    let mut n = 0;
    let mut best = None;
    for (k, g) in groups.iter().enumerate() {
        if n + g.len() > digits.len() {
            break;
        }
        for &c in &b[g.clone()] {
            digits[n] = c - b'0';
            n += 1;
        }
        let d = &digits[..n];
        if n >= 13 && d.iter().any(|&x| x != d[0]) && luhn(d) {
            best = Some(k + 1);
        }
    }
    best
}

/// `AAA-GG-SSSS`: area not 000, 666 or 900–999; group not 00; serial not
/// 0000.
fn ssn(s: &str) -> bool {
    let d = digits_only(s);
    if d.len() != 9 {
        return false;
    }
    let area = d[0] as u32 * 100 + d[1] as u32 * 10 + d[2] as u32;
    let group = d[3] * 10 + d[4];
    let serial = d[5..].iter().fold(0u32, |a, &x| a * 10 + x as u32);
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// 10–15 digits in a phone layout; NANP numbers need valid area and
/// exchange codes.
fn phone(s: &str) -> bool {
    let d = digits_only(s);
    if !(10..=15).contains(&d.len()) {
        return false;
    }
    if s.starts_with('+') {
        return true;
    }
    if s.starts_with('0') {
        return d.len() <= 12;
    }
    // North American: optional leading 1, then NXX-NXX-XXXX.
    let nanp = if d.len() == 11 && d[0] == 1 {
        &d[1..]
    } else {
        &d[..]
    };
    nanp.len() == 10 && nanp[0] >= 2 && nanp[3] >= 2
}

/// IBAN lengths by country (SWIFT IBAN registry).
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24),
    ("AE", 23),
    ("AL", 28),
    ("AT", 20),
    ("AZ", 28),
    ("BA", 20),
    ("BE", 16),
    ("BG", 22),
    ("BH", 22),
    ("BI", 27),
    ("BR", 29),
    ("BY", 28),
    ("CH", 21),
    ("CR", 22),
    ("CY", 28),
    ("CZ", 24),
    ("DE", 22),
    ("DJ", 27),
    ("DK", 18),
    ("DO", 28),
    ("EE", 20),
    ("EG", 29),
    ("ES", 24),
    ("FI", 18),
    ("FK", 18),
    ("FO", 18),
    ("FR", 27),
    ("GB", 22),
    ("GE", 22),
    ("GI", 23),
    ("GL", 18),
    ("GR", 27),
    ("GT", 28),
    ("HR", 21),
    ("HU", 28),
    ("IE", 22),
    ("IL", 23),
    ("IQ", 23),
    ("IS", 26),
    ("IT", 27),
    ("JO", 30),
    ("KW", 30),
    ("KZ", 20),
    ("LB", 28),
    ("LC", 32),
    ("LI", 21),
    ("LT", 20),
    ("LU", 20),
    ("LV", 21),
    ("LY", 25),
    ("MC", 27),
    ("MD", 24),
    ("ME", 22),
    ("MK", 19),
    ("MN", 20),
    ("MR", 27),
    ("MT", 31),
    ("MU", 30),
    ("NI", 28),
    ("NL", 18),
    ("NO", 15),
    ("OM", 23),
    ("PK", 24),
    ("PL", 28),
    ("PS", 29),
    ("PT", 25),
    ("QA", 29),
    ("RO", 24),
    ("RS", 22),
    ("RU", 33),
    ("SA", 24),
    ("SC", 31),
    ("SD", 18),
    ("SE", 24),
    ("SI", 19),
    ("SK", 24),
    ("SM", 27),
    ("SO", 23),
    ("ST", 25),
    ("SV", 28),
    ("TL", 23),
    ("TN", 24),
    ("TR", 26),
    ("UA", 29),
    ("VA", 22),
    ("VG", 24),
    ("XK", 20),
    ("YE", 30),
];

fn iban_mod97(compact: &[u8]) -> bool {
    let mut rem = 0u32;
    let rotated = compact[4..].iter().chain(&compact[..4]);
    for &c in rotated {
        let v = match c {
            b'0'..=b'9' => (c - b'0') as u32,
            b'A'..=b'Z' => (c - b'A') as u32 + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// Validates an IBAN candidate (compact or grouped with single spaces).
/// Returns the byte length of the IBAN within `s` (a grouped candidate may
/// have run on into following words).
fn iban(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let country = s.get(..2)?;
    let known = IBAN_LENGTHS
        .iter()
        .find(|(c, _)| *c == country)
        .map(|&(_, l)| l);
    let (compact, byte_len) = match known {
        Some(len) => {
            let mut compact = Vec::with_capacity(len);
            let mut end = 0;
            for (i, &c) in b.iter().enumerate() {
                if c == b' ' {
                    continue;
                }
                compact.push(c);
                end = i + 1;
                if compact.len() == len {
                    break;
                }
            }
            if compact.len() != len {
                return None;
            }
            // Must stop at a group boundary, not inside a word.
            if b.get(end).is_some_and(|&c| c != b' ') {
                return None;
            }
            (compact, end)
        }
        None => {
            // Unknown country: compact form only, 15–34 characters.
            if b.contains(&b' ') || !(15..=34).contains(&b.len()) {
                return None;
            }
            (b.to_vec(), b.len())
        }
    };
    iban_mod97(&compact).then_some(byte_len)
}
