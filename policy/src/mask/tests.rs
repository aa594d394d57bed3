use super::detect::{b64url_decode, luhn, prefilter};
use super::*;

fn all() -> ActiveMasks {
    ActiveMasks::with_detectors(DetectorSet::all())
}

fn only(d: Detector) -> ActiveMasks {
    ActiveMasks::with_detectors([d].into_iter().collect())
}

fn m(d: Detector) -> String {
    format!("<masked:{}>", d.as_str())
}

/// (detector, input, expected output or None when unchanged). Each case runs
/// with that detector alone and with all detectors.
#[test]
fn detector_table() {
    use Detector::*;
    let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
    let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi\nZ1BjP5CE/Wm/Rr500P\n-----END RSA PRIVATE KEY-----";
    let cases: Vec<(Detector, String, Option<String>)> = vec![
        // Credit cards: Luhn, 13–19 digits, separators.
        (CreditCard, "4111111111111111".into(), Some(m(CreditCard))),
        (CreditCard, "4111111111111112".into(), None),
        (
            CreditCard,
            "4111 1111 1111 1111 123".into(),
            Some(format!("{} 123", m(CreditCard))),
        ),
        (
            CreditCard,
            "cvv 123 4111111111111111".into(),
            Some(format!("cvv 123 {}", m(CreditCard))),
        ),
        (
            CreditCard,
            "4111111111111111 4012888888881881".into(),
            Some(format!("{} {}", m(CreditCard), m(CreditCard))),
        ),
        (
            CreditCard,
            "card 4111 1111 1111 1111 exp 12/29".into(),
            Some(format!("card {} exp 12/29", m(CreditCard))),
        ),
        (
            CreditCard,
            "4111-1111-1111-1111".into(),
            Some(m(CreditCard)),
        ),
        (
            CreditCard,
            "5500 0000 0000 0004".into(),
            Some(m(CreditCard)),
        ),
        (CreditCard, "378282246310005".into(), Some(m(CreditCard))),
        (CreditCard, "6011111111111117".into(), Some(m(CreditCard))),
        (CreditCard, "4222222222222".into(), Some(m(CreditCard))),
        (CreditCard, "0000000000000000".into(), None),
        (CreditCard, "1234567812345670".into(), None), // Luhn-valid, not a card network
        (CreditCard, "411111111111".into(), None),     // 12 digits
        (CreditCard, "41111111111111111111".into(), None), // 20 digits
        (CreditCard, "order 12345678901234567890123".into(), None),
        (CreditCard, "x4111111111111111".into(), None),
        // IBAN: country length + mod 97.
        (Iban, "GB82WEST12345698765432".into(), Some(m(Iban))),
        (Iban, "GB82WEST12345698765433".into(), None),
        (Iban, "GB82 WEST 1234 5698 7654 32".into(), Some(m(Iban))),
        (
            Iban,
            "pay to GB82 WEST 1234 5698 7654 32 TODAY".into(),
            Some(format!("pay to {} TODAY", m(Iban))),
        ),
        (Iban, "DE89370400440532013000".into(), Some(m(Iban))),
        (Iban, "DE8937040044053201300".into(), None), // too short for DE
        (Iban, "FR1420041010050500013M02606".into(), Some(m(Iban))),
        (Iban, "NO9386011117947".into(), Some(m(Iban))),
        (Iban, "gb82west12345698765432".into(), None),
        // US SSN.
        (UsSsn, "078-05-1120".into(), Some(m(UsSsn))),
        (
            UsSsn,
            "ssn: 123-45-6789.".into(),
            Some(format!("ssn: {}.", m(UsSsn))),
        ),
        (UsSsn, "123 45 6789".into(), Some(m(UsSsn))),
        (UsSsn, "000-12-3456".into(), None),
        (UsSsn, "666-12-3456".into(), None),
        (UsSsn, "900-12-3456".into(), None),
        (UsSsn, "123-00-4567".into(), None),
        (UsSsn, "123-45-0000".into(), None),
        (UsSsn, "123456789".into(), None),
        (UsSsn, "2023-05-1120".into(), None),
        (UsSsn, "1-078-05-1120".into(), None),
        (UsSsn, "078-05-1120-9".into(), None),
        // E-mail.
        (Email, "alice@example.com".into(), Some(m(Email))),
        (
            Email,
            "Contact: a.b+tag@mail.example.co.uk, thanks".into(),
            Some(format!("Contact: {}, thanks", m(Email))),
        ),
        (Email, "user@localhost".into(), None),
        (Email, "@example.com".into(), None),
        (Email, "a..b@example.com".into(), None),
        (Email, ".a@example.com".into(), None),
        (Email, "a@-example.com".into(), None),
        (Email, "a@example.c".into(), None),
        (Email, "a@exa_mple.com".into(), None),
        (Email, "a@example-.com".into(), None),
        (Email, format!("a@{}.com", "x".repeat(64)), None),
        (Email, "not an email @ all".into(), None),
        // Phone.
        (Phone, "+14155552671".into(), Some(m(Phone))),
        (Phone, "+1 415 555 2671".into(), Some(m(Phone))),
        (Phone, "+44 20 7946 0958".into(), Some(m(Phone))),
        (
            Phone,
            "call (415) 555-2671 now".into(),
            Some(format!("call {} now", m(Phone))),
        ),
        (Phone, "415-555-2671".into(), Some(m(Phone))),
        (Phone, "415.555.2671".into(), Some(m(Phone))),
        (Phone, "1-800-555-0199".into(), Some(m(Phone))),
        (Phone, "020 7946 0958".into(), Some(m(Phone))),
        (Phone, "01 23 45 67 89".into(), Some(m(Phone))),
        (Phone, "4155552671".into(), None),    // plain integer
        (Phone, "1234567890123".into(), None), // plain integer
        (Phone, "2024-01-15".into(), None),    // date
        (Phone, "2024-01-15 12:30:00".into(), None),
        (Phone, "192.168.100.200".into(), None), // IPv4 address
        (Phone, "123-555-2671".into(), None),    // NANP area code starts with 1
        (Phone, "415-055-2671".into(), None),    // NANP exchange starts with 0
        (Phone, "+123".into(), None),
        (
            Phone,
            "+1 415 555 2671 2024 7".into(),
            Some(format!("{} 7", m(Phone))),
        ),
        (Phone, "+1234567890123456789".into(), None),
        (Phone, "+1 (415 555 2671".into(), None),
        (Phone, "x+14155552671".into(), None),
        (Phone, "v1.2.3-4155552671".into(), None),
        // AWS access key ids.
        (
            AwsAccessKey,
            "AKIAIOSFODNN7EXAMPLE".into(),
            Some(m(AwsAccessKey)),
        ),
        (
            AwsAccessKey,
            "key=ASIAY34FZKBOKMUTVV7A;".into(),
            Some(format!("key={};", m(AwsAccessKey))),
        ),
        (AwsAccessKey, "AKIAIOSFODNN7EXAMPL".into(), None), // 19 chars
        (AwsAccessKey, "AKIAIOSFODNN7EXAMPLEX".into(), None), // 21 chars
        (AwsAccessKey, "AKIAIOSFODNN0EXAMPLE".into(), None), // 0 is not base32
        (AwsAccessKey, "XAKIAIOSFODNN7EXAMPLE".into(), None),
        // PEM private keys: the whole block.
        (PrivateKey, pem.into(), Some(m(PrivateKey))),
        (
            PrivateKey,
            format!("before\n{pem}\nafter"),
            Some(format!("before\n{}\nafter", m(PrivateKey))),
        ),
        (
            PrivateKey,
            "-----BEGIN PRIVATE KEY-----\nMIIEvQ...".into(),
            Some(m(PrivateKey)),
        ),
        (
            PrivateKey,
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\n"
                .into(),
            Some(format!("{}\n", m(PrivateKey))),
        ),
        (
            PrivateKey,
            "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----".into(),
            None,
        ),
        (
            PrivateKey,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----".into(),
            None,
        ),
        // JWTs: header must decode to JSON with "alg".
        (Jwt, jwt.into(), Some(m(Jwt))),
        (
            Jwt,
            format!("Authorization: Bearer {jwt}"),
            Some(format!("Authorization: Bearer {}", m(Jwt))),
        ),
        (
            Jwt,
            "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.".into(),
            Some(m(Jwt)),
        ),
        (Jwt, "eyJmb28iOiJiYXIifQ.eyJzdWIiOiJ4In0.c2ln".into(), None), // {"foo":"bar"}
        (Jwt, "eyJhbGciOiJIUzI1NiJ9".into(), None),                    // one part
        (Jwt, "eyJhb.eyJzdWIiOiJ4In0.c2ln".into(), None),              // header not JSON
    ];
    let mut failures = Vec::new();
    for (d, input, want) in &cases {
        for (label, masks) in [("alone", only(*d)), ("all", all())] {
            let got = masks.mask_cell(false, CellKind::Text, input);
            // With all detectors, an unmasked case must stay unmasked only
            // when no other detector legitimately applies; check "alone"
            // strictly and "all" only for the positive cases.
            if label == "all" && want.is_none() {
                continue;
            }
            if got.as_deref() != want.as_deref() {
                failures.push(format!(
                    "{d} ({label}) on {input:?}: want {want:?}, got {got:?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn negatives_stay_clean_with_all_detectors() {
    let masks = all();
    for s in [
        "",
        "hello world",
        "SELECT * FROM users WHERE id = 42",
        "4111111111111112",
        "000-12-3456",
        "2024-01-15T12:30:00Z",
        "order #1234567890123",
        "version 10.0.19045.3803",
        "uuid 123e4567-e89b-12d3-a456-426614174000",
        "192.168.100.200",
        "price: 1234567.89",
        "AKIA is a prefix",
        "-----BEGIN PUBLIC KEY-----",
        "ab@cd",
    ] {
        assert_eq!(masks.mask_cell(false, CellKind::Text, s), None, "{s:?}");
        assert!(matches!(masks.mask_text(s), Cow::Borrowed(_)), "{s:?}");
        assert!(masks.detectors_fired(s).is_empty(), "{s:?}");
    }
}

/// A lower-priority candidate that overlapped a claimed span is searched
/// again in what is left (found by fuzzing: masking must be idempotent).
#[test]
fn overlapping_candidates_are_retried() {
    let masks = all();
    let (out, fired) = masks.mask_text_fired("+1 1111 1111 1109 078-05-1120");
    assert_eq!(out, "<masked:phone> <masked:us_ssn>");
    assert!(fired.contains(Detector::Phone) && fired.contains(Detector::UsSsn));
    assert!(matches!(masks.mask_text(&out), Cow::Borrowed(_)));
    let out = masks.mask_text("alice@4111 1111  2252 07111 1111 078-05-1120");
    assert_eq!(out, "alice@4111 1111  <masked:credit_card>-05-1120");
    assert!(matches!(masks.mask_text(&out), Cow::Borrowed(_)));
    let out = masks.mask_text("020 7940 794(415) 555-2671");
    assert_eq!(out, "<masked:phone><masked:phone>");
    assert!(matches!(masks.mask_text(&out), Cow::Borrowed(_)));
    let out = masks.mask_text("(415) 555-2671 020 40970 7940 0950");
    assert!(matches!(masks.mask_text(&out), Cow::Borrowed(_)), "{out}");
    // Two PEM blocks, the second inside the first's END search range.
    let two =
        "-----BEGIN PRIVATE KEY-----\na\n-----BEGIN PRIVATE KEY-----\nb\n-----END PRIVATE KEY-----";
    assert_eq!(masks.mask_text(two), "<masked:private_key>");
}

#[test]
fn several_detectors_in_one_value() {
    let masks = all();
    let s = "alice@example.com paid with 4111 1111 1111 1111, ssn 078-05-1120, key AKIAIOSFODNN7EXAMPLE";
    let (out, fired) = masks.mask_text_fired(s);
    assert_eq!(
        out,
        "<masked:email> paid with <masked:credit_card>, ssn <masked:us_ssn>, key <masked:aws_access_key>"
    );
    let names: Vec<&str> = fired.iter().map(|d| d.as_str()).collect();
    assert_eq!(names, ["credit_card", "email", "us_ssn", "aws_access_key"]);
    assert_eq!(masks.detectors_fired(s), fired);
    // Disabled detectors do not fire.
    let only_email = only(Detector::Email);
    assert_eq!(
        only_email.mask_text(s),
        "<masked:email> paid with 4111 1111 1111 1111, ssn 078-05-1120, key AKIAIOSFODNN7EXAMPLE"
    );
}

#[test]
fn column_masks_and_cell_kinds() {
    let p = crate::Policy::parse(
        "[[mask]]\ndetectors = [\"credit_card\"]\ncolumns = [\"password*\", \"*token*\", \"ssn\"]\n",
        "p.toml",
    )
    .unwrap();
    let w = crate::Workload::default();
    let t = crate::Target {
        protocol: crate::Protocol::Postgres,
        addr: "127.0.0.1".parse().unwrap(),
        port: 5432,
        host: None,
        database: None,
        user: None,
    };
    let a = p.masker().for_context(&w, &t);
    for (col, want) in [
        ("password", true),
        ("PASSWORD_HASH", true),
        ("api_token", true),
        ("Token", true),
        ("ssn", true),
        ("ssn_last4", false),
        ("email", false),
    ] {
        assert_eq!(a.column_masked(col), want, "{col}");
    }
    assert_eq!(
        a.mask_cell(true, CellKind::Text, "hunter2").as_deref(),
        Some("****")
    );
    assert_eq!(
        a.mask_cell(true, CellKind::Numeric, "123456789").as_deref(),
        Some("0")
    );
    // Detectors never touch numeric cells.
    assert_eq!(
        a.mask_cell(false, CellKind::Numeric, "4111111111111111"),
        None
    );
    assert_eq!(
        a.mask_cell(false, CellKind::Text, "4111111111111111")
            .as_deref(),
        Some("<masked:credit_card>")
    );
    assert_eq!(a.mask_cell(false, CellKind::Text, "plain"), None);
    let (v, fired) = a.mask_cell_fired(false, CellKind::Text, "4111111111111111");
    assert!(v.is_some() && fired.contains(Detector::CreditCard));
}

#[test]
fn mask_text_borrows_when_clean() {
    let masks = all();
    let sql = "SELECT id, name FROM users WHERE id = 7";
    assert!(matches!(masks.mask_text(sql), Cow::Borrowed(_)));
    let sql = "UPDATE users SET email = 'bob@example.org' WHERE id = 7";
    assert_eq!(
        masks.mask_text(sql),
        "UPDATE users SET email = '<masked:email>' WHERE id = 7"
    );
    // No detectors: always borrowed.
    let none = ActiveMasks::default();
    assert!(none.is_empty());
    assert!(matches!(
        none.mask_text("alice@example.com"),
        Cow::Borrowed(_)
    ));
}

#[test]
fn detector_names_round_trip() {
    for d in Detector::ALL {
        assert_eq!(d.as_str().parse::<Detector>(), Ok(d));
        assert_eq!(d.to_string(), d.as_str());
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{}\"", d.as_str()));
    }
    assert!("ssn".parse::<Detector>().is_err());
    let set: DetectorSet = [Detector::Jwt, Detector::Email].into_iter().collect();
    assert_eq!(set.len(), 2);
    assert_eq!(format!("{set:?}"), "{Email, Jwt}");
}

#[test]
fn helpers() {
    assert!(luhn(&[4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]));
    assert!(!luhn(&[4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2]));
    assert_eq!(
        b64url_decode("eyJhbGciOiJub25lIn0").unwrap(),
        br#"{"alg":"none"}"#
    );
    assert_eq!(b64url_decode("YQ").unwrap(), b"a");
    assert_eq!(b64url_decode("Y"), None);
    assert_eq!(b64url_decode("a+b/"), None);
}

/// Large clean values cost one byte scan and no allocation.
#[test]
fn long_clean_text_is_cheap() {
    let masks = all();
    let s = "lorem ipsum dolor sit amet ".repeat(10_000);
    assert!(matches!(masks.mask_text(&s), Cow::Borrowed(_)));
    let digits = "1".repeat(100_000);
    assert_eq!(masks.mask_cell(false, CellKind::Text, &digits), None);
}

/// Common clean values never reach a regex.
#[test]
fn prefilter_rejects_common_values() {
    for s in [
        "2024-01-15 12:30:00",
        "2024-01-15T12:30:00.123456+00:00",
        "order 1234567890123 shipped",
        "The quick brown fox jumps over the lazy dog",
        "{\"a\": 1, \"b\": [1,2,3], \"c\": \"xyz\"}",
        "550e8400-e29b-41d4-a716-446655440000",
        "10.0.0.1:5432",
        "-123456789.123456",
        "1,234,567,890.00",
    ] {
        assert_eq!(
            prefilter(s, DetectorSet::all()),
            DetectorSet::EMPTY,
            "{s:?}"
        );
    }
    // And every positive sample passes it.
    let p = prefilter("4111 1111 1111 1111", DetectorSet::all());
    assert!(p.contains(Detector::CreditCard));
    assert!(prefilter("(415) 555-2671", DetectorSet::all()).contains(Detector::Phone));
    assert!(prefilter("020 7946 0958", DetectorSet::all()).contains(Detector::Phone));
    assert!(prefilter("+44 20 7946 0958", DetectorSet::all()).contains(Detector::Phone));
    assert!(prefilter("078-05-1120", DetectorSet::all()).contains(Detector::UsSsn));
}

/// Inputs built to make a naive matcher quadratic finish quickly (a
/// quadratic pass over these would take minutes).
#[test]
fn adversarial_inputs_stay_linear() {
    let masks = all();
    let inputs = [
        "2 ".repeat(50_000),
        "4111111111111111 ".repeat(5_000),
        "a@b.cd ".repeat(20_000),
        "a@".repeat(50_000),
        "-----BEGIN PRIVATE KEY-----\n".repeat(5_000),
        "GB82 ".repeat(20_000),
        "+1 ".repeat(30_000),
        "078-05-1120 ".repeat(10_000),
        "eyJ.".repeat(30_000),
        "AKIA".repeat(30_000),
    ];
    for s in &inputs {
        let out = masks.mask_text(s);
        assert!(out.len() <= s.len() * 3);
    }
}
