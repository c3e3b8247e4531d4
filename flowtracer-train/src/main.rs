//! The `flowtracer` command-line tool.
//!
//! - `flowtracer demo`: warm-up + FlowTracer GRPO on the built-in task, writes `runs/demo/`.
//! - `flowtracer train`: the same with every knob, checkpoints and `--resume`.
//! - `flowtracer compare`: uniform vs FlowTracer vs baselines over several seeds (resumable).
//! - `flowtracer causal`: mask each method's top reasoning tokens, measure answer changes.
//! - `flowtracer score` / `flowtracer explain`: score an attention dump of another model.
//!
//! Exit codes: 0 success, 1 training failure (e.g. non-finite loss), 2 bad input (see
//! [`cli::ExitCode`]).

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use flowtracer_train::cli;

#[derive(Debug, Parser)]
#[command(
    name = "flowtracer",
    version,
    about = "FlowTracer credit assignment for GRPO"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Warm-up + FlowTracer GRPO on the built-in task; writes runs/demo/.
    Demo(cli::demo::Args),
    /// Warm-up + GRPO with any credit method, checkpoints and --resume.
    Train(cli::train::Args),
    /// The same budget for several credit methods over several seeds.
    Compare(cli::compare::Args),
    /// The causal test: mask each credit method's top reasoning tokens, decode the answer again.
    Causal(cli::causal::Args),
    /// FlowTracer scores of one attention dump, as JSON.
    Score(cli::score::Args),
    /// An HTML page explaining one attention dump.
    Explain(cli::explain::Args),
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Command::Demo(a) => cli::demo::run(a),
        Command::Train(mut a) => {
            // With --resume, only the knobs given on the command line are compared with
            // the checkpoint's.
            if let Some(("train", sub)) = matches.subcommand() {
                a.given = sub
                    .ids()
                    .filter(|id| sub.value_source(id.as_str()) == Some(ValueSource::CommandLine))
                    .map(|id| id.as_str().to_owned())
                    .collect();
            }
            cli::train::run(a)
        }
        Command::Compare(a) => cli::compare::run(a),
        Command::Causal(a) => cli::causal::run(a),
        Command::Score(a) => cli::score::run(a),
        Command::Explain(a) => cli::explain::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            e.code().into()
        }
    }
}
