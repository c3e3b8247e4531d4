//! The built-in verifiable task: chained arithmetic mod 10 with distractor variables.
//!
//! A prompt defines a few digit variables, then derived variables, then asks for one of them:
//!
//! ```text
//! prompt:   a=3 b=7 c=a+b e=b-a d=c*2 ?d
//! response: c=3+7=0 e=7-3=4 d=0*2=0 <answer>0</answer>
//! ```
//!
//! The response evaluates every derived variable in prompt order (substituting values), then
//! gives the queried value in answer tags. The queried variable depends on a *chain* of steps;
//! the other derived variables are *distractors*. The generator knows which response tokens are
//! truly decisive for the answer: the operand and result digits of the chain steps and the
//! answer digit. Distractor steps, names, operators, separators and tags are not decisive.

use flowtracer_core::baselines::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::answer::{AnswerSpan, locate_answer};
use crate::error::ConfigError;
use crate::tokenizer::{self, BOS, EOS, digit_token, token_digit};

/// The difficulty knob of the task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskConfig {
    /// Number of base variables with literal digit values (2..=4).
    pub num_base: usize,
    /// Number of derived steps the queried variable depends on (1..=4).
    pub chain_steps: usize,
    /// Number of derived steps the answer does not depend on (0..=3).
    pub distractor_steps: usize,
    /// Probability that a step's second operand is a literal digit instead of a variable.
    pub literal_prob: f64,
    /// The operators drawn from (any of `+`, `-`, `*`; all mod 10).
    pub ops: String,
}

impl Default for TaskConfig {
    fn default() -> Self {
        Self {
            num_base: 2,
            chain_steps: 2,
            distractor_steps: 1,
            literal_prob: 0.3,
            ops: "+-".into(),
        }
    }
}

impl TaskConfig {
    /// A preset by level: level `d` has `d` chain steps; levels 1 and 2 have two base
    /// variables and one distractor, levels 3 and 4 three and two. Level 2 is the default.
    pub fn level(d: usize) -> Self {
        let d = d.clamp(1, 4);
        Self {
            num_base: if d <= 2 { 2 } else { 3 },
            chain_steps: d,
            distractor_steps: if d <= 2 { 1 } else { 2 },
            ..Self::default()
        }
    }

    /// Checks the ranges documented on the fields.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first field out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(2..=4).contains(&self.num_base) {
            return Err(ConfigError::knob(format!(
                "num_base must be in 2..=4, got {}",
                self.num_base
            )));
        }
        if !(1..=4).contains(&self.chain_steps) {
            return Err(ConfigError::knob(format!(
                "chain_steps must be in 1..=4, got {}",
                self.chain_steps
            )));
        }
        if self.distractor_steps > 3 {
            return Err(ConfigError::knob(format!(
                "distractor_steps must be in 0..=3, got {}",
                self.distractor_steps
            )));
        }
        if !(0.0..=1.0).contains(&self.literal_prob) {
            return Err(ConfigError::knob(format!(
                "literal_prob must be in [0, 1], got {}",
                self.literal_prob
            )));
        }
        if self.ops.is_empty() || !self.ops.chars().all(|c| "+-*".contains(c)) {
            return Err(ConfigError::knob(format!(
                "ops must be a non-empty subset of \"+-*\", got {:?}",
                self.ops
            )));
        }
        Ok(())
    }

    /// Prompt length in tokens (including BOS); every prompt of one config has this length.
    pub fn prompt_len(&self) -> usize {
        1 + 4 * self.num_base + 6 * (self.chain_steps + self.distractor_steps) + 2
    }

    /// Length in tokens of a canonical response (including EOS).
    pub fn response_len(&self) -> usize {
        8 * (self.chain_steps + self.distractor_steps) + 3 + 1
    }
}

/// One generated problem with its canonical solution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Prompt tokens, starting with BOS.
    pub prompt: Vec<u32>,
    /// Canonical response tokens, ending with EOS.
    pub response: Vec<u32>,
    /// The correct answer digit.
    pub answer: u8,
    /// Positions (in `response`) of the tokens the answer truly depends on, ascending.
    pub decisive: Vec<usize>,
}

#[derive(Clone, Copy)]
enum Operand {
    Var(usize),
    Lit(u8),
}

/// Generates one problem.
pub fn generate(config: &TaskConfig, rng: &mut SplitMix64) -> Problem {
    let mut names: Vec<u8> = (b'a'..=b'j').collect();
    rng.shuffle(&mut names);
    let mut values: Vec<u8> = Vec::new();
    let mut prompt = String::new();
    for name in &names[..config.num_base] {
        let val = rng.below(10) as u8;
        values.push(val);
        prompt.push_str(&format!("{}={} ", *name as char, val));
    }
    // Interleave chain and distractor steps; the first derived step is always a chain step so
    // the chain starts from base variables only.
    let mut kinds = vec![true; config.chain_steps];
    kinds.extend(vec![false; config.distractor_steps]);
    rng.shuffle(&mut kinds[1..]);
    let mut response = String::new();
    let mut decisive_chars: Vec<usize> = Vec::new();
    let mut prev_chain: Option<usize> = None;
    let mut chain_vars: Vec<usize> = Vec::new();
    for (s, &is_chain) in kinds.iter().enumerate() {
        let var = config.num_base + s;
        let defined = var; // variables 0..var exist
        let pick_var = |rng: &mut SplitMix64, allowed: &dyn Fn(usize) -> bool| -> usize {
            loop {
                let v = rng.below(defined);
                if allowed(v) {
                    return v;
                }
            }
        };
        let chain_set = chain_vars.clone();
        let base_or_chain = |v: usize| v < config.num_base || chain_set.contains(&v);
        let a = match (is_chain, prev_chain) {
            (true, Some(p)) => Operand::Var(p),
            (true, None) => Operand::Var(rng.below(config.num_base)),
            (false, _) => Operand::Var(pick_var(rng, &|_| true)),
        };
        let b = if rng.next_f64() < config.literal_prob {
            Operand::Lit(rng.below(10) as u8)
        } else {
            // Two different variables (`x-x` would make the answer trivially 0).
            let first = match a {
                Operand::Var(v) => v,
                Operand::Lit(_) => usize::MAX,
            };
            if is_chain {
                Operand::Var(pick_var(rng, &|v| v < config.num_base && v != first))
            } else {
                Operand::Var(pick_var(rng, &|v| base_or_chain(v) && v != first))
            }
        };
        let ops = config.ops.as_bytes();
        let op = ops[rng.below(ops.len())];
        let val = |o: Operand| match o {
            Operand::Var(v) => values[v],
            Operand::Lit(d) => d,
        };
        let (x, y) = (val(a), val(b));
        let result = match op {
            b'+' => (x + y) % 10,
            b'-' => (x + 10 - y) % 10,
            _ => (x * y) % 10,
        };
        values.push(result);
        let show = |o: Operand| match o {
            Operand::Var(v) => names[v] as char,
            Operand::Lit(d) => (b'0' + d) as char,
        };
        prompt.push_str(&format!(
            "{}={}{}{} ",
            names[var] as char,
            show(a),
            op as char,
            show(b)
        ));
        let start = response.len();
        response.push_str(&format!(
            "{}={}{}{}={} ",
            names[var] as char, x, op as char, y, result
        ));
        if is_chain {
            decisive_chars.extend([start + 2, start + 4, start + 6]);
            chain_vars.push(var);
            prev_chain = Some(var);
        }
    }
    let query = prev_chain.expect("at least one chain step");
    let answer = values[query];
    prompt.push_str(&format!("?{}", names[query] as char));
    // Tokens: each character is one token, so character offsets are token offsets until the
    // answer tags; the answer digit sits right after `<answer>`.
    let mut response_tokens = tokenizer::encode(&response).expect("task alphabet");
    response_tokens.push(tokenizer::ANSWER_OPEN);
    decisive_chars.push(response_tokens.len());
    response_tokens.push(digit_token(answer));
    response_tokens.push(tokenizer::ANSWER_CLOSE);
    response_tokens.push(EOS);
    let mut prompt_tokens = vec![BOS];
    prompt_tokens.extend(tokenizer::encode(&prompt).expect("task alphabet"));
    debug_assert_eq!(prompt_tokens.len(), config.prompt_len());
    debug_assert_eq!(response_tokens.len(), config.response_len());
    Problem {
        prompt: prompt_tokens,
        response: response_tokens,
        answer,
        decisive: decisive_chars,
    }
}

/// Exact-match reward: 1 if the last answer span is exactly the correct digit, else 0.
pub fn reward(answer: u8, completion: &[u32]) -> f32 {
    match locate_answer(completion) {
        AnswerSpan::Found(r)
            if r.len() == 1 && token_digit(completion[r.start]) == Some(answer) =>
        {
            1.0
        }
        _ => 0.0,
    }
}

/// A held-out evaluation set: `n` problems from their own seed stream.
pub fn eval_set(config: &TaskConfig, n: usize, seed: u64) -> Vec<Problem> {
    let mut rng = SplitMix64::new(seed ^ 0x5EED_E7A1_0000_0000);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    let mut tries = 0;
    while out.len() < n && tries < n * 100 {
        tries += 1;
        let p = generate(config, &mut rng);
        if seen.insert(p.prompt.clone()) {
            out.push(p);
        }
    }
    out
}
