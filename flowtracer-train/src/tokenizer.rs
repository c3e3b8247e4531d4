//! The tasks' tiny tokenizers: one token per character, plus single tokens for the answer tags.
//!
//! Each task has its own character table ([`Table`]): [`CHAIN`] for chained arithmetic (the
//! free functions [`encode`], [`decode`], [`token_text`], [`char_token`] use it, and
//! [`VOCAB_SIZE`] is its size) and [`COUNTDOWN`] for Countdown. Both share the five special
//! tokens (`PAD`, `BOS`, `EOS`, `<answer>`, `</answer>`), so the answer locator works on
//! either; a character's id depends on its table, so a model is trained for one table.

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

/// Number of distinct tokens of the chained-arithmetic table ([`CHAIN`]).
pub const VOCAB_SIZE: usize = FIRST_CHAR as usize + CHARS.len();

/// A character table: the characters after the five special tokens, one token each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table(&'static str);

/// The chained-arithmetic table (the demo's; [`VOCAB_SIZE`] tokens).
pub const CHAIN: Table = Table(CHARS);

/// The Countdown table: digits, the four operators, parentheses, `=`, `?` and space. The
/// digits have the same ids as in [`CHAIN`] ([`digit_token`] works for both).
pub const COUNTDOWN: Table = Table("0123456789+-*/()=? ");

impl Table {
    /// Number of distinct tokens (specials included).
    pub const fn vocab_size(self) -> usize {
        FIRST_CHAR as usize + self.0.len()
    }

    /// The token of a character the table knows.
    pub fn char_token(self, c: char) -> Option<u32> {
        self.0.find(c).map(|i| FIRST_CHAR + i as u32)
    }

    /// Encodes text; `<answer>` / `</answer>` become single tokens.
    ///
    /// Returns `None` on a character outside the table.
    pub fn encode(self, text: &str) -> Option<Vec<u32>> {
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
                out.push(self.char_token(c)?);
                rest = &rest[c.len_utf8()..];
            }
        }
        Some(out)
    }

    /// The text of one token (`<pad>`, `<bos>`, `<eos>` for the specials, `<unk>` for an id
    /// outside the table).
    pub fn token_text(self, t: u32) -> &'static str {
        match t {
            PAD => "<pad>",
            BOS => "<bos>",
            EOS => "<eos>",
            ANSWER_OPEN => "<answer>",
            ANSWER_CLOSE => "</answer>",
            t if (FIRST_CHAR..FIRST_CHAR + self.0.len() as u32).contains(&t) => {
                let i = (t - FIRST_CHAR) as usize;
                &self.0[i..i + 1]
            }
            _ => "<unk>",
        }
    }

    /// Decodes tokens to text, dropping padding, BOS and EOS.
    pub fn decode(self, tokens: &[u32]) -> String {
        tokens
            .iter()
            .filter(|&&t| !matches!(t, PAD | BOS | EOS))
            .map(|&t| self.token_text(t))
            .collect()
    }
}

/// The token of a character the chained-arithmetic tokenizer knows.
pub fn char_token(c: char) -> Option<u32> {
    CHAIN.char_token(c)
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

/// Encodes text with the chained-arithmetic table; `<answer>` / `</answer>` become single
/// tokens.
///
/// Returns `None` on a character outside the vocabulary.
pub fn encode(text: &str) -> Option<Vec<u32>> {
    CHAIN.encode(text)
}

/// The text of one chained-arithmetic token (`<pad>`, `<bos>`, `<eos>` for the specials).
pub fn token_text(t: u32) -> &'static str {
    CHAIN.token_text(t)
}

/// Decodes chained-arithmetic tokens to text, dropping padding, BOS and EOS.
pub fn decode(tokens: &[u32]) -> String {
    CHAIN.decode(tokens)
}
