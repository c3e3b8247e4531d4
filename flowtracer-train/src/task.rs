//! The built-in verifiable tasks: chained arithmetic mod 10 with distractor variables (the
//! default, below) and Countdown ([`crate::countdown`]), chosen by [`TaskKind`].
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
use crate::countdown::{self, Countdown, CountdownConfig};
use crate::error::ConfigError;
use crate::tokenizer::{self, BOS, EOS, Table, digit_token, token_digit};

/// Which built-in task a run trains on (`--task`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Chained arithmetic mod 10 (the default; `--difficulty` sets the level).
    #[default]
    Chain,
    /// Countdown ([`crate::countdown`]; `--countdown-numbers` sets the size).
    Countdown,
}

impl TaskKind {
    /// Every task, in `--help` order.
    pub const ALL: &'static [TaskKind] = &[TaskKind::Chain, TaskKind::Countdown];
    /// The names `FromStr` accepts and `Display` writes, in the order of [`Self::ALL`].
    pub const NAMES: &'static [&'static str] = &["chain", "countdown"];

    /// The task's name.
    pub const fn name(self) -> &'static str {
        match self {
            TaskKind::Chain => "chain",
            TaskKind::Countdown => "countdown",
        }
    }
}

impl core::fmt::Display for TaskKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// A task name that is none of [`TaskKind::NAMES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownTask(pub String);

impl core::fmt::Display for UnknownTask {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "unknown task {:?} (expected one of: {})",
            self.0,
            TaskKind::NAMES.join(", ")
        )
    }
}

impl core::error::Error for UnknownTask {}

impl core::str::FromStr for TaskKind {
    type Err = UnknownTask;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskKind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownTask(s.to_owned()))
    }
}

/// The task and its difficulty knobs. The chained-arithmetic fields are read when `kind` is
/// [`TaskKind::Chain`], `countdown` when it is [`TaskKind::Countdown`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskConfig {
    /// Which task (absent in `state.json` of earlier versions: chained arithmetic).
    #[serde(default)]
    pub kind: TaskKind,
    /// Countdown's size (absent in `state.json` of earlier versions: the default).
    #[serde(default)]
    pub countdown: CountdownConfig,
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
            kind: TaskKind::Chain,
            countdown: CountdownConfig::default(),
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

    /// Countdown with `numbers` numbers (the other sizes at their defaults).
    pub fn countdown(numbers: usize) -> Self {
        Self {
            kind: TaskKind::Countdown,
            countdown: CountdownConfig {
                numbers,
                ..CountdownConfig::default()
            },
            ..Self::default()
        }
    }

    /// The task's character table (its tokenizer).
    pub fn table(&self) -> Table {
        match self.kind {
            TaskKind::Chain => tokenizer::CHAIN,
            TaskKind::Countdown => tokenizer::COUNTDOWN,
        }
    }

    /// The task's vocabulary size (the model's `vocab_size`).
    pub fn vocab_size(&self) -> usize {
        self.table().vocab_size()
    }

    /// Checks the ranges documented on the fields.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first field out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kind == TaskKind::Countdown {
            return self.countdown.validate();
        }
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

    /// Prompt length in tokens (including BOS): every chained-arithmetic prompt of one config
    /// has this length; for Countdown, the longest prompt.
    pub fn prompt_len(&self) -> usize {
        match self.kind {
            TaskKind::Chain => {
                1 + 4 * self.num_base + 6 * (self.chain_steps + self.distractor_steps) + 2
            }
            TaskKind::Countdown => self.countdown.prompt_len(),
        }
    }

    /// Length in tokens of a canonical response (including EOS); for Countdown, the longest.
    pub fn response_len(&self) -> usize {
        match self.kind {
            TaskKind::Chain => 8 * (self.chain_steps + self.distractor_steps) + 3 + 1,
            TaskKind::Countdown => self.countdown.response_len(),
        }
    }

    /// A short description for reports (`chained arithmetic level 3`, `Countdown, 3
    /// numbers in 1..=20, targets up to 100`).
    pub fn describe(&self) -> String {
        match self.kind {
            TaskKind::Chain => format!(
                "chained arithmetic ({} chain steps, {} distractors)",
                self.chain_steps, self.distractor_steps
            ),
            TaskKind::Countdown => format!(
                "Countdown ({} numbers in 1..={}, targets up to {})",
                self.countdown.numbers, self.countdown.max_number, self.countdown.max_target
            ),
        }
    }
}

/// One generated problem with its canonical solution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Prompt tokens, starting with BOS.
    pub prompt: Vec<u32>,
    /// Canonical response tokens, ending with EOS.
    pub response: Vec<u32>,
    /// The correct answer digit (chained arithmetic; 0 for Countdown, whose answers are
    /// checked against `countdown`).
    pub answer: u8,
    /// Positions (in `response`) of the tokens the answer truly depends on, ascending.
    pub decisive: Vec<usize>,
    /// The numbers and target of a Countdown problem (`None` for chained arithmetic).
    pub countdown: Option<Countdown>,
}

#[derive(Clone, Copy)]
enum Operand {
    Var(usize),
    Lit(u8),
}

/// Generates one problem of the configured task.
pub fn generate(config: &TaskConfig, rng: &mut SplitMix64) -> Problem {
    match config.kind {
        TaskKind::Chain => generate_chain(config, rng),
        TaskKind::Countdown => {
            let (prompt, response, decisive, data) = countdown::generate(&config.countdown, rng);
            Problem {
                prompt,
                response,
                answer: 0,
                decisive,
                countdown: Some(data),
            }
        }
    }
}

/// Generates one chained-arithmetic problem.
fn generate_chain(config: &TaskConfig, rng: &mut SplitMix64) -> Problem {
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
        countdown: None,
    }
}

/// The reward of a completion for its problem: [`reward`] (exact match of the answer digit)
/// for chained arithmetic, [`countdown::reward`] (a valid equation reaching the target) for
/// Countdown. 1 or 0.
pub fn score(problem: &Problem, completion: &[u32]) -> f32 {
    match &problem.countdown {
        Some(c) => countdown::reward(c, completion),
        None => reward(problem.answer, completion),
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
