//! The answer-span locator ([method §1](docs/method.md#s1): last tag wins).

use flowtracer_train::answer::{AnswerSpan, locate_answer, locate_answer_text};
use flowtracer_train::task::reward;
use flowtracer_train::tokenizer::encode;

fn span(text: &str) -> AnswerSpan {
    locate_answer(&encode(text).expect("known characters"))
}

#[test]
fn missing_tags() {
    assert_eq!(span(""), AnswerSpan::Missing);
    assert_eq!(span("c=1+2=3 "), AnswerSpan::Missing);
    assert_eq!(span("<answer>3"), AnswerSpan::Missing, "unclosed");
    assert_eq!(
        span("3</answer>"),
        AnswerSpan::Missing,
        "close without open"
    );
    assert_eq!(
        span("</answer><answer>3"),
        AnswerSpan::Missing,
        "wrong order"
    );
    assert_eq!(locate_answer_text("<answer>3"), None);
}

#[test]
fn empty_tags() {
    assert_eq!(span("<answer></answer>"), AnswerSpan::Empty);
    assert_eq!(
        span("<answer>4</answer> <answer></answer>"),
        AnswerSpan::Empty,
        "last wins even if empty"
    );
    assert_eq!(locate_answer_text("<answer></answer>"), None);
}

#[test]
fn multiple_tags_last_wins() {
    let t = encode("<answer>1</answer> <answer>2</answer>").unwrap();
    assert_eq!(locate_answer(&t), AnswerSpan::Found(5..6));
    // An unclosed tag after the last complete pair is ignored.
    let t = encode("<answer>1</answer> <answer>2").unwrap();
    assert_eq!(locate_answer(&t), AnswerSpan::Found(1..2));
    // Nested open tags: the nearest open before the last close.
    let t = encode("<answer>1<answer>2</answer>").unwrap();
    assert_eq!(locate_answer(&t), AnswerSpan::Found(3..4));
    let s = "<answer>12</answer>x<answer>3</answer>";
    assert_eq!(&s[locate_answer_text(s).unwrap()], "3");
}

#[test]
fn reward_is_exact_match_of_the_last_span() {
    let ok = encode("c=1+2=3 <answer>3</answer>").unwrap();
    assert_eq!(reward(3, &ok), 1.0);
    assert_eq!(reward(4, &ok), 0.0);
    assert_eq!(
        reward(3, &encode("<answer>3</answer><answer>4</answer>").unwrap()),
        0.0
    );
    assert_eq!(reward(3, &encode("<answer>33</answer>").unwrap()), 0.0);
    assert_eq!(reward(3, &encode("<answer></answer>").unwrap()), 0.0);
    assert_eq!(reward(3, &encode("<answer>3").unwrap()), 0.0);
}
