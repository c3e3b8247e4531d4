//! The answer-span locator ([method §1](docs/method.md#s1): the content of the last `<answer>...</answer>`).

use core::ops::Range;

use crate::tokenizer::{ANSWER_CLOSE, ANSWER_OPEN};

/// Where the final answer is in a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerSpan {
    /// No complete `<answer>...</answer>` pair (no tag, an unclosed tag, a stray close tag).
    Missing,
    /// The last complete pair has nothing between its tags.
    Empty,
    /// The content of the last complete pair, as positions in the searched slice.
    Found(Range<usize>),
}

impl AnswerSpan {
    /// The span when there is a non-empty one.
    pub fn range(&self) -> Option<Range<usize>> {
        match self {
            AnswerSpan::Found(r) => Some(r.clone()),
            _ => None,
        }
    }
}

/// Locates the answer in a token sequence: the content of the last complete
/// `<answer>`…`</answer>` pair.
///
/// The last close tag wins; its pair is the nearest open tag before it, so
/// `<answer>1<answer>2</answer>` gives the span of `2`. Open tags after the last close tag
/// (a truncated second answer) are ignored.
///
/// # Complexity
///
/// O(n) time, no allocation.
///
/// # Examples
///
/// ```
/// use flowtracer_train::answer::{locate_answer, AnswerSpan};
/// use flowtracer_train::tokenizer::encode;
///
/// let t = encode("c=1 <answer>4</answer> <answer>7</answer>").unwrap();
/// assert_eq!(locate_answer(&t), AnswerSpan::Found(t.len() - 2..t.len() - 1));
/// assert_eq!(locate_answer(&encode("<answer></answer>").unwrap()), AnswerSpan::Empty);
/// assert_eq!(locate_answer(&encode("<answer>4").unwrap()), AnswerSpan::Missing);
/// ```
pub fn locate_answer(tokens: &[u32]) -> AnswerSpan {
    let Some(close) = tokens.iter().rposition(|&t| t == ANSWER_CLOSE) else {
        return AnswerSpan::Missing;
    };
    let Some(open) = tokens[..close].iter().rposition(|&t| t == ANSWER_OPEN) else {
        return AnswerSpan::Missing;
    };
    if open + 1 == close {
        AnswerSpan::Empty
    } else {
        AnswerSpan::Found(open + 1..close)
    }
}

/// The same rule on text: byte range of the content of the last `<answer>...</answer>`.
///
/// Returns `None` when there is no complete pair or the content is empty.
///
/// # Examples
///
/// ```
/// use flowtracer_train::answer::locate_answer_text;
///
/// let s = "x <answer>12</answer> y <answer>3</answer>";
/// assert_eq!(&s[locate_answer_text(s).unwrap()], "3");
/// assert_eq!(locate_answer_text("<answer>1"), None);
/// ```
pub fn locate_answer_text(text: &str) -> Option<Range<usize>> {
    let close = text.rfind("</answer>")?;
    let open = text[..close].rfind("<answer>")?;
    let start = open + "<answer>".len();
    (start < close).then_some(start..close)
}
