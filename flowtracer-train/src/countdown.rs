//! The Countdown task (TinyZero's rules at a size a small model can learn): combine the given
//! numbers with `+ - * /` and parentheses, each exactly once, to reach the target.
//!
//! ```text
//! prompt:   7 12 3 ?57
//! response: 7+12=19 19*3=57 <answer>(7+12)*3</answer>
//! ```
//!
//! The response writes one step per combination, then the whole equation in answer tags.
//! The reward ([`reward`]) is 1 when the equation uses every given number exactly once (as a
//! multiset: a number given twice is used twice) and evaluates exactly to the target, else 0.
//! Arithmetic is exact integer arithmetic in `i64` with checked operations: `/` is allowed
//! only when it divides exactly (and never by 0), an overflow makes the equation invalid, and
//! there are no floats anywhere. Malformed equations (unbalanced parentheses, unary minus, a
//! character that is not a digit, operator, parenthesis or space, an empty or over-long
//! equation, nesting deeper than [`MAX_DEPTH`]) score 0; the verifier never panics.
//!
//! Generation draws `numbers` values in `1..=max_number`, then combines two remaining values
//! at a time with a random operator (subtraction only when the result is positive, division
//! only when exact, every intermediate value at most [`MAX_VALUE`]) until one value is left:
//! the target, kept when it lies in `1..=max_target`. Every step is used by the final
//! equation, so the *decisive* response tokens are the numbers and operators of every step
//! and of the equation; the results after `=`, `=`, spaces, parentheses, tags and EOS are
//! not decisive.

use flowtracer_core::baselines::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::answer::{AnswerSpan, locate_answer};
use crate::error::ConfigError;
use crate::tokenizer::{ANSWER_CLOSE, ANSWER_OPEN, BOS, COUNTDOWN, EOS};

/// The largest intermediate value (and target) the generator produces.
pub const MAX_VALUE: i64 = 999;
/// The longest equation the verifier reads (characters); a longer one scores 0.
pub const MAX_EQUATION_CHARS: usize = 256;
/// The deepest parenthesis nesting the verifier reads; a deeper one scores 0.
pub const MAX_DEPTH: usize = 32;

/// The size knobs of Countdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountdownConfig {
    /// Numbers per problem (2..=4; the study uses 3 or 4).
    pub numbers: usize,
    /// Each number is drawn from `1..=max_number` (1..=99).
    pub max_number: u32,
    /// Targets lie in `1..=max_target` (1..=[`MAX_VALUE`]).
    pub max_target: u32,
}

impl Default for CountdownConfig {
    /// Three numbers from 1 to 20, targets up to 100.
    fn default() -> Self {
        Self {
            numbers: 3,
            max_number: 20,
            max_target: 100,
        }
    }
}

fn digits(v: u64) -> usize {
    v.to_string().len()
}

impl CountdownConfig {
    /// Checks the ranges documented on the fields.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first field out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(2..=4).contains(&self.numbers) {
            return Err(ConfigError::knob(format!(
                "--countdown-numbers must be in 2..=4, got {}",
                self.numbers
            )));
        }
        if !(1..=99).contains(&self.max_number) {
            return Err(ConfigError::knob(format!(
                "countdown max_number must be in 1..=99, got {}",
                self.max_number
            )));
        }
        if !(1..=MAX_VALUE as u32).contains(&self.max_target) {
            return Err(ConfigError::knob(format!(
                "countdown max_target must be in 1..={MAX_VALUE}, got {}",
                self.max_target
            )));
        }
        Ok(())
    }

    /// The longest prompt in tokens (BOS, the numbers with a space after each, `?`, the
    /// target).
    pub fn prompt_len(&self) -> usize {
        1 + self.numbers * (digits(u64::from(self.max_number)) + 1)
            + 1
            + digits(u64::from(self.max_target))
    }

    /// The longest canonical response in tokens (EOS included): `numbers - 1` steps of at
    /// most `3 + 1 + 3 + 1 + 3 + 1` characters, the equation (numbers, operators and at most
    /// two parentheses per inner step) between the two tag tokens, EOS.
    pub fn response_len(&self) -> usize {
        let k = self.numbers;
        let v = digits(MAX_VALUE as u64);
        let steps = (k - 1) * (3 * v + 3);
        let equation = k * digits(u64::from(self.max_number)) + (k - 1) + 2 * (k - 2);
        steps + 1 + equation + 1 + 1
    }
}

/// A Countdown problem's data: what the verifier checks against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Countdown {
    /// The given numbers, in prompt order.
    pub numbers: Vec<u32>,
    /// The target.
    pub target: u32,
}

struct Item {
    value: i64,
    expr: String,
    leaf: bool,
}

impl Item {
    fn operand(&self) -> String {
        if self.leaf {
            self.expr.clone()
        } else {
            format!("({})", self.expr)
        }
    }
}

/// One combination of two values, if `op` may combine them under the generator's rules.
fn combine(a: i64, op: u8, b: i64) -> Option<i64> {
    let r = match op {
        b'+' => a + b,
        b'-' if a > b => a - b,
        b'*' => a * b,
        b'/' if b != 0 && a % b == 0 => a / b,
        _ => return None,
    };
    (1..=MAX_VALUE).contains(&r).then_some(r)
}

/// A generated problem: prompt tokens (from BOS), canonical response tokens (to EOS), the
/// decisive positions in the response, and the problem's data.
pub(crate) type Generated = (Vec<u32>, Vec<u32>, Vec<usize>, Countdown);

/// Generates one problem.
pub(crate) fn generate(config: &CountdownConfig, rng: &mut SplitMix64) -> Generated {
    loop {
        if let Some(p) = attempt(config, rng) {
            return p;
        }
    }
}

fn attempt(config: &CountdownConfig, rng: &mut SplitMix64) -> Option<Generated> {
    let numbers: Vec<u32> = (0..config.numbers)
        .map(|_| 1 + rng.below(config.max_number as usize) as u32)
        .collect();
    let mut items: Vec<Item> = numbers
        .iter()
        .map(|&n| Item {
            value: i64::from(n),
            expr: n.to_string(),
            leaf: true,
        })
        .collect();
    let mut steps = String::new();
    let mut decisive = Vec::new();
    while items.len() > 1 {
        let mut found = None;
        for _ in 0..16 {
            let i = rng.below(items.len());
            let mut j = rng.below(items.len() - 1);
            if j >= i {
                j += 1;
            }
            let op = b"+-*/"[rng.below(4)];
            if let Some(r) = combine(items[i].value, op, items[j].value) {
                found = Some((i, j, op, r));
                break;
            }
        }
        let (i, j, op, r) = found?;
        let (a, b) = (items[i].value, items[j].value);
        let start = steps.len();
        let (sa, sb) = (a.to_string(), b.to_string());
        decisive.extend(start..start + sa.len() + 1 + sb.len());
        steps.push_str(&format!("{sa}{}{sb}={r} ", op as char));
        let expr = format!("{}{}{}", items[i].operand(), op as char, items[j].operand());
        let (hi, lo) = (i.max(j), i.min(j));
        items.remove(hi);
        items.remove(lo);
        items.push(Item {
            value: r,
            expr,
            leaf: false,
        });
    }
    let target = items[0].value;
    if !(1..=i64::from(config.max_target)).contains(&target) {
        return None;
    }
    let equation = &items[0].expr;
    let mut prompt_text = String::new();
    for n in &numbers {
        prompt_text.push_str(&format!("{n} "));
    }
    prompt_text.push_str(&format!("?{target}"));
    let mut prompt = vec![BOS];
    prompt.extend(COUNTDOWN.encode(&prompt_text).expect("countdown alphabet"));
    let mut response = COUNTDOWN.encode(&steps).expect("countdown alphabet");
    response.push(ANSWER_OPEN);
    let eq_start = response.len();
    for (k, c) in equation.chars().enumerate() {
        if c.is_ascii_digit() || "+-*/".contains(c) {
            decisive.push(eq_start + k);
        }
    }
    response.extend(COUNTDOWN.encode(equation).expect("countdown alphabet"));
    response.push(ANSWER_CLOSE);
    response.push(EOS);
    debug_assert!(prompt.len() <= config.prompt_len());
    debug_assert!(response.len() <= config.response_len());
    let target = target as u32;
    Some((prompt, response, decisive, Countdown { numbers, target }))
}

/// Why an equation is invalid (the verifier's internal result; every case scores 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Invalid {
    Syntax,
    Overflow,
    Inexact,
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    depth: usize,
    used: Vec<i64>,
}

impl Parser<'_> {
    fn skip_spaces(&mut self) {
        while self.s.get(self.pos) == Some(&b' ') {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_spaces();
        self.s.get(self.pos).copied()
    }

    fn expr(&mut self) -> Result<i64, Invalid> {
        let mut v = self.term()?;
        while let Some(op @ (b'+' | b'-')) = self.peek() {
            self.pos += 1;
            let r = self.term()?;
            v = if op == b'+' {
                v.checked_add(r)
            } else {
                v.checked_sub(r)
            }
            .ok_or(Invalid::Overflow)?;
        }
        Ok(v)
    }

    fn term(&mut self) -> Result<i64, Invalid> {
        let mut v = self.factor()?;
        while let Some(op @ (b'*' | b'/')) = self.peek() {
            self.pos += 1;
            let r = self.factor()?;
            v = if op == b'*' {
                v.checked_mul(r).ok_or(Invalid::Overflow)?
            } else {
                if r == 0 || v.checked_rem(r).ok_or(Invalid::Overflow)? != 0 {
                    return Err(Invalid::Inexact);
                }
                v.checked_div(r).ok_or(Invalid::Overflow)?
            };
        }
        Ok(v)
    }

    fn factor(&mut self) -> Result<i64, Invalid> {
        match self.peek() {
            Some(b'(') => {
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(Invalid::Syntax);
                }
                self.pos += 1;
                let v = self.expr()?;
                if self.peek() != Some(b')') {
                    return Err(Invalid::Syntax);
                }
                self.pos += 1;
                self.depth -= 1;
                Ok(v)
            }
            Some(c) if c.is_ascii_digit() => {
                let mut v: i64 = 0;
                while let Some(&c @ b'0'..=b'9') = self.s.get(self.pos) {
                    v = v
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(i64::from(c - b'0')))
                        .ok_or(Invalid::Overflow)?;
                    self.pos += 1;
                }
                self.used.push(v);
                Ok(v)
            }
            _ => Err(Invalid::Syntax),
        }
    }
}

/// The value of an equation and the numbers it uses, in order of appearance.
fn evaluate(equation: &str) -> Result<(i64, Vec<i64>), Invalid> {
    if equation.len() > MAX_EQUATION_CHARS {
        return Err(Invalid::Syntax);
    }
    let mut p = Parser {
        s: equation.as_bytes(),
        pos: 0,
        depth: 0,
        used: Vec::new(),
    };
    let v = p.expr()?;
    if p.peek().is_some() {
        return Err(Invalid::Syntax);
    }
    Ok((v, p.used))
}

/// Whether `equation` (text) uses every number of `problem` exactly once and evaluates
/// exactly to its target. Never panics.
///
/// # Complexity
///
/// O(length + numbers²) time; the equation is read only up to [`MAX_EQUATION_CHARS`].
///
/// # Examples
///
/// ```
/// use flowtracer_train::countdown::{Countdown, check_equation};
///
/// let p = Countdown { numbers: vec![7, 12, 3], target: 57 };
/// assert!(check_equation("(7+12)*3", &p));
/// assert!(check_equation("3*(12+7)", &p));
/// assert!(!check_equation("(7+12)*3+0", &p)); // 0 is not given
/// assert!(!check_equation("(7+12)*3", &Countdown { numbers: vec![7, 12, 3], target: 58 }));
/// assert!(!check_equation("((7+12)*3", &p)); // unbalanced
/// ```
pub fn check_equation(equation: &str, problem: &Countdown) -> bool {
    let Ok((value, mut used)) = evaluate(equation) else {
        return false;
    };
    let mut given: Vec<i64> = problem.numbers.iter().map(|&n| i64::from(n)).collect();
    used.sort_unstable();
    given.sort_unstable();
    value == i64::from(problem.target) && used == given
}

/// The Countdown reward of a completion: 1 when the content of its last complete
/// `<answer>…</answer>` pair is an equation [`check_equation`] accepts, else 0 (also for a
/// missing or empty answer and for tokens outside the Countdown table).
pub fn reward(problem: &Countdown, completion: &[u32]) -> f32 {
    let AnswerSpan::Found(r) = locate_answer(completion) else {
        return 0.0;
    };
    let span = &completion[r];
    if span.iter().any(|&t| COUNTDOWN.token_text(t).len() != 1) {
        return 0.0;
    }
    if check_equation(&COUNTDOWN.decode(span), problem) {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(numbers: &[u32], target: u32) -> Countdown {
        Countdown {
            numbers: numbers.to_vec(),
            target,
        }
    }

    #[test]
    fn the_verifier_on_hand_made_cases() {
        let p = problem(&[4, 6, 20], 5);
        // Valid, with and without spaces, any order, division only when exact.
        assert!(!check_equation("20/4*6-(6+20)/4*0+0", &problem(&[], 0)));
        assert!(check_equation("20/(6-4)-5", &problem(&[20, 6, 4, 5], 5)));
        assert!(!check_equation(
            "(20 + 6 - 4) / 4",
            &problem(&[20, 6, 4, 4], 5)
        ));
        assert!(check_equation(
            "(20 + 6 - 6) / 4",
            &problem(&[20, 6, 6, 4], 5)
        ));
        assert!(check_equation("20-6-4-5", &problem(&[20, 6, 4, 5], 5)));
        assert!(check_equation("20/4", &problem(&[4, 20], 5)));
        assert!(check_equation("(6-4)*20/8", &problem(&[6, 4, 20, 8], 5)));
        // Wrong target.
        assert!(!check_equation("20/4*6", &p));
        assert!(check_equation("20/4*6", &problem(&[4, 6, 20], 30)));
        // A number reused, a number missing, a number not given.
        assert!(!check_equation("20/4+6-6", &problem(&[4, 6, 20], 5)));
        assert!(!check_equation("20/4", &p));
        assert!(!check_equation("20/4*6/6", &p));
        // A number given twice must be used twice.
        assert!(check_equation("3*3+1", &problem(&[3, 1, 3], 10)));
        assert!(!check_equation("3*3+1", &problem(&[3, 1, 2], 10)));
        // Inexact division, division by zero.
        assert!(!check_equation("(20+6)/4", &problem(&[4, 6, 20], 6)));
        assert!(!check_equation("20/(6-6)", &problem(&[20, 6, 6], 0)));
        // 7 / 2 * 2 is 7 over the rationals but not exact at the division.
        assert!(!check_equation("7/2*2", &problem(&[7, 2, 2], 7)));
        // Unbalanced parentheses, empty, garbage, unary minus, trailing operator.
        for bad in [
            "(20/4", "20/4)", "((20)/4", ")(", "", " ", "()", "abc", "20/4=5", "-20/4", "20/4+",
            "20//4", "2 0/4", "20 4",
        ] {
            assert!(!check_equation(bad, &p), "{bad:?}");
        }
        // Very long and very deep input: rejected without recursion blow-up.
        let long = "1+".repeat(10_000) + "1";
        assert!(!check_equation(&long, &problem(&[1; 10_001], 10_001)));
        let deep = "(".repeat(100_000) + "5" + &")".repeat(100_000);
        assert!(!check_equation(&deep, &problem(&[5], 5)));
        let ok_deep = "(".repeat(MAX_DEPTH) + "5" + &")".repeat(MAX_DEPTH);
        assert!(check_equation(&ok_deep, &problem(&[5], 5)));
        let too_deep = "(".repeat(MAX_DEPTH + 1) + "5" + &")".repeat(MAX_DEPTH + 1);
        assert!(!check_equation(&too_deep, &problem(&[5], 5)));
        // Overflow: a huge literal and a huge product.
        assert!(!check_equation(
            "99999999999999999999999",
            &problem(&[1], 1)
        ));
        let big = "999999999*999999999*999999999";
        assert!(!check_equation(
            big,
            &problem(&[999_999_999, 999_999_999, 999_999_999], 1)
        ));
        assert!(!check_equation("9223372036854775807+1", &problem(&[1], 1)));
    }

    #[test]
    fn reward_reads_the_last_answer_in_the_countdown_table() {
        let p = problem(&[7, 12, 3], 57);
        let enc = |s: &str| COUNTDOWN.encode(s).unwrap();
        assert_eq!(
            reward(&p, &enc("7+12=19 19*3=57 <answer>(7+12)*3</answer>")),
            1.0
        );
        assert_eq!(
            reward(&p, &enc("<answer>1</answer><answer>(7+12)*3</answer>")),
            1.0
        );
        assert_eq!(
            reward(&p, &enc("<answer>(7+12)*3</answer><answer>1</answer>")),
            0.0
        );
        assert_eq!(reward(&p, &enc("<answer></answer>")), 0.0);
        assert_eq!(reward(&p, &enc("<answer>(7+12)*3")), 0.0);
        assert_eq!(reward(&p, &[]), 0.0);
        // Specials and out-of-table ids inside the answer score 0, never panic.
        let mut t = enc("<answer>(7+12)*3</answer>");
        t.insert(2, 99);
        assert_eq!(reward(&p, &t), 0.0);
        t[2] = BOS;
        assert_eq!(reward(&p, &t), 0.0);
    }

    /// Every generated problem is solved by its own canonical answer, and the decisive
    /// positions are exactly the numbers and operators of the steps and the equation.
    #[test]
    fn generated_problems_verify_and_know_their_decisive_tokens() {
        for numbers in 2..=4 {
            let config = CountdownConfig {
                numbers,
                ..CountdownConfig::default()
            };
            let mut rng = SplitMix64::new(numbers as u64);
            for _ in 0..300 {
                let (prompt, response, decisive, p) = generate(&config, &mut rng);
                assert_eq!(prompt[0], BOS);
                assert!(prompt.len() <= config.prompt_len());
                assert!(response.len() <= config.response_len());
                assert_eq!(*response.last().unwrap(), EOS);
                assert_eq!(
                    reward(&p, &response),
                    1.0,
                    "{}",
                    COUNTDOWN.decode(&response)
                );
                assert!(p.numbers.iter().all(|&n| (1..=20).contains(&n)));
                assert!((1..=100).contains(&p.target));
                // Decisive: digits and operators outside the results (after `=`).
                let text: Vec<&str> = response.iter().map(|&t| COUNTDOWN.token_text(t)).collect();
                let mut expect = Vec::new();
                let mut in_result = false;
                for (k, s) in text.iter().enumerate() {
                    match *s {
                        "=" => in_result = true,
                        " " | "<answer>" => in_result = false,
                        s if !in_result && (s.len() == 1 && "0123456789+-*/".contains(s)) => {
                            expect.push(k)
                        }
                        _ => {}
                    }
                }
                assert_eq!(decisive, expect, "{}", COUNTDOWN.decode(&response));
            }
        }
        // A hand-checked problem: the first of seed 1 at three numbers.
        let (prompt, response, decisive, _) =
            generate(&CountdownConfig::default(), &mut SplitMix64::new(1));
        let text = COUNTDOWN.decode(&response);
        let steps_end = text.find("<answer>").unwrap();
        // Every decisive position inside the steps is a digit or an operator before `=`.
        for &d in &decisive {
            let s = COUNTDOWN.token_text(response[d]);
            assert!("0123456789+-*/".contains(s), "{s} in {text}");
        }
        assert!(decisive.iter().any(|&d| d > steps_end));
        assert!(COUNTDOWN.decode(&prompt).contains('?'));
    }
}
