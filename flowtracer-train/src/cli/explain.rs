//! `flowtracer explain`: one self-contained HTML page showing where the credit goes.
//!
//! ```text
//! flowtracer explain --attention FILE [--tensor NAME]... [--layers SPEC]
//!                    --question A..B --answer C..D [--response E..F]
//!                    [--config FILE] --tokens FILE --out FILE.html [--title TEXT]
//! ```
//!
//! The inputs are those of [`score`](super::score) plus `--tokens FILE`, a JSON list of the
//! N token strings (for example `tokenizer.convert_ids_to_tokens(ids)` dumped with
//! `json.dump`). The page (see [`render`](crate::render)) shades each response token by its
//! throughput, marks hubs and checkpoints, shows each token's numbers on hover, and draws the
//! backbone as an SVG. It loads nothing from the network. It is written atomically
//! ([`write_atomic`](crate::atomic::write_atomic)); on any error nothing is written and the
//! message is one line (exit code 2).

use std::path::{Path, PathBuf};

use super::CliError;
use super::score::{Input, score, write_out};
use crate::render::{ExplainPage, render_explain_html};

/// Arguments of `flowtracer explain`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The attention file and spans (as for `flowtracer score`).
    #[command(flatten)]
    pub input: Input,
    /// A JSON list of the N token strings.
    #[arg(long, value_name = "FILE")]
    pub tokens: PathBuf,
    /// The HTML file to write.
    #[arg(long, value_name = "FILE.html")]
    pub out: PathBuf,
    /// A heading for the page (default: the attention file's name).
    #[arg(long, value_name = "TEXT")]
    pub title: Option<String>,
}

/// Runs `flowtracer explain`.
///
/// # Errors
///
/// A [`CliError`] for any bad input (those of `flowtracer score`, an unreadable or
/// malformed `--tokens` file, or a token count that differs from the attention's N) or a
/// failed write; no output file exists after an error.
pub fn run(args: Args) -> Result<(), CliError> {
    let tokens = read_tokens(&args.tokens)?;
    let scored = score(&args.input)?;
    if tokens.len() != scored.n {
        return Err(CliError::bad_input(format!(
            "--tokens {} has {} tokens, but the attention in {} is over {} tokens",
            args.tokens.display(),
            tokens.len(),
            args.input.source().display(),
            scored.n
        )));
    }
    let metrics = scored.metrics();
    let layers = scored.layers.as_ref().map_or_else(
        || String::from("as given"),
        |l| match (l.first(), l.last()) {
            (Some(a), Some(b)) if l.windows(2).all(|w| w[1] == w[0] + 1) => {
                format!("{a}..{}", b + 1)
            }
            _ => l
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        },
    );
    let summary = [
        ("layers", layers),
        ("answer mass", format!("{:.4}", metrics.answer_mass)),
        ("sources", metrics.num_sources.to_string()),
        (
            "kept edges",
            format!(
                "{} ({:.0}% of flow)",
                scored.backbone.edges.len(),
                100.0 * metrics.kept_edge_share
            ),
        ),
    ];
    let title = args
        .title
        .clone()
        .unwrap_or_else(|| display_name(args.input.source()));
    let html = render_explain_html(&ExplainPage {
        title: &title,
        tokens: &tokens,
        question: scored.question.clone(),
        answer: scored.answer.clone(),
        response: scored.response.clone(),
        flow: scored.trace.flow(),
        throughput: scored.trace.throughput(),
        weights: &scored.weights,
        backbone: &scored.backbone,
        summary: &summary,
    });
    write_out(&args.out, html.as_bytes())
}

/// The most bytes a `--tokens` file may hold.
pub const MAX_TOKENS_BYTES: u64 = 64 << 20;

/// Reads a JSON list of token strings.
///
/// # Errors
///
/// A [`CliError`] if the file cannot be read (not a regular file, or larger than
/// [`MAX_TOKENS_BYTES`]) or is not a JSON list of strings.
pub fn read_tokens(path: &Path) -> Result<Vec<String>, CliError> {
    let bytes = crate::atomic::read_regular(path, MAX_TOKENS_BYTES).map_err(|e| {
        CliError::bad_input(format!("cannot read --tokens {}: {e}", path.display()))
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        CliError::bad_input(format!(
            "bad --tokens {}: expected a JSON list of strings ({e})",
            path.display()
        ))
    })
}

fn display_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}
