//! The task's tiny tokenizer: one token per character, plus single tokens for the answer tags.

/// Padding (never attended to, never scored).
pub const PAD: u32 = 0;
/// Beginning of sequence (first prompt token).
pub const BOS: u32 = 1;
/// End of sequence (ends a completion).
pub const EOS: u32 = 2;
/// `<answer>` as one token.
pub const ANSWER_OPEN: u32 = 3;
/// `</answer>` as one token.
pub const ANSWER_CLOSE: u32 = 4;

const CHARS: &str = "0123456789abcdefghij=+-*? ";
const FIRST_CHAR: u32 = 5;

/// Number of distinct tokens.
pub const VOCAB_SIZE: usize = FIRST_CHAR as usize + CHARS.len();

/// The token of a character the tokenizer knows.
pub fn char_token(c: char) -> Option<u32> {
    CHARS.find(c).map(|i| FIRST_CHAR + i as u32)
}

/// The token of the digit `d` (`0..=9`).
///
/// # Panics
///
/// Panics if `d > 9`.
pub fn digit_token(d: u8) -> u32 {
    assert!(d <= 9, "digit out of range: {d}");
    FIRST_CHAR + u32::from(d)
}

/// The digit a token stands for, if it is a digit token.
pub fn token_digit(t: u32) -> Option<u8> {
    (FIRST_CHAR..FIRST_CHAR + 10)
        .contains(&t)
        .then(|| (t - FIRST_CHAR) as u8)
}

/// Encodes text; `<answer>` / `</answer>` become single tokens.
///
/// Returns `None` on a character outside the vocabulary.
pub fn encode(text: &str) -> Option<Vec<u32>> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if let Some(r) = rest.strip_prefix("<answer>") {
            out.push(ANSWER_OPEN);
            rest = r;
        } else if let Some(r) = rest.strip_prefix("</answer>") {
            out.push(ANSWER_CLOSE);
            rest = r;
        } else {
            out.push(char_token(c)?);
            rest = &rest[c.len_utf8()..];
        }
    }
    Some(out)
}

/// The text of one token (`<pad>`, `<bos>`, `<eos>` for the specials).
pub fn token_text(t: u32) -> &'static str {
    match t {
        PAD => "<pad>",
        BOS => "<bos>",
        EOS => "<eos>",
        ANSWER_OPEN => "<answer>",
        ANSWER_CLOSE => "</answer>",
        t if (FIRST_CHAR..FIRST_CHAR + CHARS.len() as u32).contains(&t) => {
            let i = (t - FIRST_CHAR) as usize;
            &CHARS[i..i + 1]
        }
        _ => "<unk>",
    }
}

/// Decodes tokens to text, dropping padding, BOS and EOS.
pub fn decode(tokens: &[u32]) -> String {
    tokens
        .iter()
        .filter(|&&t| !matches!(t, PAD | BOS | EOS))
        .map(|&t| token_text(t))
        .collect()
}
