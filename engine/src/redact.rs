//! Card data and secrets never rest anywhere (R3.7): merchant text (descriptions, metadata)
//! is masked before it is stored, and every log line passes through [`redact`] before it is
//! written. Pure functions over strings.
//!
//! - A PAN is 13–19 digits, optionally grouped by single spaces or dashes, passing the Luhn
//!   check; all but its last four digits become `*`.
//! - A CVV is 3–4 digits after a `cvv`/`cvc`/`cvv2`/`cvc2`/`security code` label; they become `***`.
//! - A bearer credential (`Bearer <token>`) and a Rialto API key (`sk_...`) become `[REDACTED]`.

use std::borrow::Cow;

/// What replaces a secret value.
pub const REDACTED: &str = "[REDACTED]";

const CVV_LABELS: [&str; 7] = [
    "cvv2",
    "cvc2",
    "cvv",
    "cvc",
    "security_code",
    "security code",
    "securitycode",
];

/// Masks PANs, labelled CVVs and bearer credentials in `text`; borrows when nothing matched.
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    for pass in [mask_pans, mask_cvvs, mask_credentials] {
        if let Some(changed) = pass(&out) {
            out = Cow::Owned(changed);
        }
    }
    out
}

/// Whether a metadata key names a card security code, whose value is then never kept.
pub fn is_cvv_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    CVV_LABELS.iter().any(|label| key.contains(label))
}

/// A metadata value as it may be stored: dropped outright under a CVV key, masked otherwise.
pub fn redact_metadata_value(key: &str, value: &str) -> String {
    if is_cvv_key(key) {
        REDACTED.to_string()
    } else {
        redact(value).into_owned()
    }
}

/// The Luhn checksum every card number carries.
pub fn luhn_valid(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(d - b'0');
            if i % 2 == 1 {
                if d > 4 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn mask_pans(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < bytes.len() {
        let starts_run = bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_digit());
        if !starts_run {
            i += 1;
            continue;
        }
        // A run of digits with single separators between them; up to 19 digits kept on the
        // stack (every log line passes here, timestamps and all).
        let mut digits = [0u8; 19];
        let mut count = 0;
        let mut j = i;
        while j < bytes.len() {
            if bytes[j].is_ascii_digit() {
                if count < digits.len() {
                    digits[count] = bytes[j];
                }
                count += 1;
                j += 1;
            } else if (bytes[j] == b' ' || bytes[j] == b'-')
                && j + 1 < bytes.len()
                && bytes[j + 1].is_ascii_digit()
                && j > i
            {
                j += 1;
            } else {
                break;
            }
        }
        if (13..=19).contains(&count) && luhn_valid(&digits[..count]) {
            let buf = out.get_or_insert_with(|| bytes.to_vec());
            let mut masked = 0;
            for b in &mut buf[i..j] {
                if b.is_ascii_digit() && masked < count - 4 {
                    *b = b'*';
                    masked += 1;
                }
            }
        }
        i = j.max(i + 1);
    }
    out.map(|b| String::from_utf8(b).expect("only ASCII digits were replaced"))
}

fn mask_cvvs(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let bytes = text.as_bytes();
    let mut out: Option<Vec<u8>> = None;
    let mut from = 0;
    while from < lower.len() {
        let Some((at, label)) = CVV_LABELS
            .iter()
            .filter_map(|l| lower[from..].find(l).map(|p| (from + p, *l)))
            .min_by_key(|(p, l)| (*p, usize::MAX - l.len()))
        else {
            break;
        };
        from = at + label.len();
        if at > 0 && bytes[at - 1].is_ascii_alphabetic() {
            continue;
        }
        // Up to four separator characters (`: `, `=`, `":"`), then the 3–4 digits.
        let mut j = from;
        while j < bytes.len() && j - from < 4 && !bytes[j].is_ascii_alphanumeric() {
            j += 1;
        }
        let start = j;
        while j < bytes.len() && bytes[j].is_ascii_digit() {
            j += 1;
        }
        if (3..=4).contains(&(j - start)) {
            let buf = out.get_or_insert_with(|| bytes.to_vec());
            buf[start..j].fill(b'*');
        }
    }
    out.map(|b| String::from_utf8(b).expect("only ASCII digits were replaced"))
}

fn mask_credentials(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let token_end = |from: usize| {
        text[from..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || "-._~+/=".contains(c)))
            .map_or(text.len(), |n| from + n)
    };
    for (at, _) in lower.match_indices("bearer ") {
        let from = at + "bearer ".len();
        let end = token_end(from);
        if end > from && !text[from..end].starts_with(REDACTED) {
            spans.push((from, end));
        }
    }
    for (at, _) in lower.match_indices("sk_") {
        let from = at + "sk_".len();
        let boundary = at == 0 || !text.as_bytes()[at - 1].is_ascii_alphanumeric();
        let end = token_end(from);
        if boundary && end - from >= 8 {
            spans.push((from, end));
        }
    }
    if spans.is_empty() {
        return None;
    }
    spans.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (from, end) in spans {
        if from < copied {
            continue;
        }
        out.push_str(&text[copied..from]);
        out.push_str(REDACTED);
        copied = end;
    }
    out.push_str(&text[copied..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_valid_pans_in_any_grouping_and_keeps_the_last_four() {
        assert_eq!(redact("card 4242424242424242."), "card ************4242.");
        assert_eq!(
            redact("pan=4111 1111 1111 1111 ok"),
            "pan=**** **** **** 1111 ok"
        );
        assert_eq!(redact("5555-5555-5555-4444"), "****-****-****-4444");
        // 15-digit Amex and 19-digit cards.
        assert_eq!(redact("378282246310005"), "***********0005");
        assert_eq!(redact("6011111111111111110"), "***************1110");
        assert_eq!(redact("4222222222222"), "*********2222");
    }

    #[test]
    fn leaves_numbers_that_are_not_card_numbers() {
        // Fails Luhn, too short, too long, and an amount.
        for text in [
            "4242424242424241",
            "424242424242",
            "42424242424242424242",
            "amount 1500 at 2026",
        ] {
            assert_eq!(redact(text), text, "{text}");
            assert!(matches!(redact(text), Cow::Borrowed(_)));
        }
    }

    #[test]
    fn masks_labelled_cvvs_in_text_and_json() {
        assert_eq!(redact("cvv 737"), "cvv ***");
        assert_eq!(redact("CVC2: 1234 thanks"), "CVC2: **** thanks");
        assert_eq!(redact(r#"{"cvv":"737"}"#), r#"{"cvv":"***"}"#);
        assert_eq!(
            redact(r#"{"security_code": "123"}"#),
            r#"{"security_code": "***"}"#
        );
        // Not a label (part of a word), and not 3–4 digits.
        assert_eq!(redact("mycvv 737"), "mycvv 737");
        assert_eq!(redact("cvv 73"), "cvv 73");
    }

    #[test]
    fn masks_bearer_tokens_and_api_keys() {
        assert_eq!(
            redact("authorization: Bearer sk_live_abcdef123456"),
            "authorization: Bearer [REDACTED]"
        );
        assert_eq!(
            redact("key=sk_abcdefgh12345678 end"),
            "key=sk_[REDACTED] end"
        );
        assert_eq!(redact("task_queue"), "task_queue");
    }

    #[test]
    fn cvv_keys_drop_their_values() {
        assert!(is_cvv_key("CVV"));
        assert!(is_cvv_key("card_cvc2"));
        assert!(!is_cvv_key("order"));
        assert_eq!(redact_metadata_value("cvv", "737"), REDACTED);
        assert_eq!(
            redact_metadata_value("note", "4242424242424242"),
            "************4242"
        );
    }

    #[test]
    fn luhn() {
        assert!(luhn_valid(b"79927398713"));
        assert!(!luhn_valid(b"79927398710"));
    }
}
