//! A self-contained HTML page that shows where FlowTracer puts the credit in one sequence.
//!
//! The page has no script and loads nothing: the styles are inline and the backbone is an
//! inline SVG, so it opens from disk, offline, in any browser. It shows:
//!
//! - the text, each response token shaded by its throughput `tau` (white to deep red,
//!   relative to the largest `tau` among the response tokens outside the answer, since the
//!   answer always carries all the flow); question tokens tinted blue, answer
//!   tokens boxed in green, hubs (the shaped, high-flow tokens) underlined in violet with
//!   class `hub`, checkpoints outlined with class `ckpt`; hovering a token shows its index,
//!   `tau`, flow `f` and advantage weight (its `title` attribute);
//! - an SVG of the backbone: tokens along a line, one arc above the line per kept edge
//!   `i -> k` with stroke width proportional to its flow `phi`, and the most probable path
//!   drawn below the line;
//! - a table of the kept edges.
//!
//! `flowtracer explain` writes it for one sequence; the trainer writes one per run for a
//! sample response. Every token is a `<span class="tok ..." data-i="K">` so tests and
//! scripts can find them.
//!
//! Token strings are shown as given, except the byte-level BPE markers `Ġ` (space), `Ċ`
//! (newline) and SentencePiece's `▁` (space), which are shown as the whitespace they stand
//! for; the `title` keeps the raw token.

use core::fmt::Write as _;
use core::ops::Range;

use flowtracer_core::backbone::Backbone;

/// Everything [`render_explain_html`] draws. Slices indexed by token position.
///
/// Missing entries (a slice shorter than `tokens`) are drawn as 0 (weights as 1), and
/// indices past the end of `tokens` are skipped, so rendering never panics.
#[derive(Debug, Clone)]
pub struct ExplainPage<'a> {
    /// A heading for the page (for example the input file, or "step 40, sample 3").
    pub title: &'a str,
    /// The tokens, as display strings.
    pub tokens: &'a [String],
    /// The question span `Q` (where flow is injected).
    pub question: Range<usize>,
    /// The answer span `A` (where flow is absorbed).
    pub answer: Range<usize>,
    /// The scored response range `R` (only these tokens are shaded).
    pub response: Range<usize>,
    /// Flow `f` per token.
    pub flow: &'a [f64],
    /// Throughput `tau` per token.
    pub throughput: &'a [f64],
    /// Advantage weight per token (1 for unshaped tokens).
    pub weights: &'a [f64],
    /// The backbone: path, kept edges, hubs, checkpoints.
    pub backbone: &'a Backbone,
    /// Extra `(label, value)` pairs shown in the page header (metrics, step, reward, ...).
    pub summary: &'a [(&'a str, String)],
}

/// Renders `page` as one self-contained HTML document (UTF-8, no script, no network).
///
/// # Complexity
///
/// O(N + E) time and output size for N tokens and E kept edges.
///
/// # Examples
///
/// ```
/// use flowtracer_core::backbone::Backbone;
/// use flowtracer_train::render::{render_explain_html, ExplainPage};
///
/// let tokens: Vec<String> = ["2+2", "=", "4"].iter().map(|s| s.to_string()).collect();
/// let backbone = Backbone { path: vec![0, 2], hubs: vec![2], ..Backbone::default() };
/// let html = render_explain_html(&ExplainPage {
///     title: "toy",
///     tokens: &tokens,
///     question: 0..1,
///     answer: 2..3,
///     response: 1..3,
///     flow: &[1.0, 0.0, 1.0],
///     throughput: &[2.0, 0.0, 2.0],
///     weights: &[1.0, 1.0, 1.5],
///     backbone: &backbone,
///     summary: &[],
/// });
/// assert!(html.contains(r#"class="tok resp ans hub path hot" data-i="2""#));
/// ```
#[must_use]
pub fn render_explain_html(page: &ExplainPage<'_>) -> String {
    let mut out = String::with_capacity(4096 + page.tokens.len() * 256);
    let n = page.tokens.len();
    // Answer tokens always carry all the flow (tau = 2 in absorbing mode); scaling by them
    // would wash out the tokens of interest, so the shading scale is the largest tau of the
    // other response tokens (answer tokens then shade at full strength).
    let scale = |skip_answer: bool| {
        page.response
            .clone()
            .filter(|k| !(skip_answer && page.answer.contains(k)))
            .filter_map(|k| page.throughput.get(k).copied())
            .filter(|t| t.is_finite())
            .fold(0.0f64, f64::max)
    };
    let tau_max = match scale(true) {
        m if m > 0.0 => m,
        _ => scale(false),
    };

    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let _ = writeln!(out, "<title>FlowTracer: {}</title>", escape(page.title));
    out.push_str(STYLE);
    out.push_str("</head>\n<body>\n<header>\n<h1>FlowTracer credit</h1>\n");
    let _ = writeln!(out, "<p class=\"subtitle\">{}</p>", escape(page.title));
    header_stats(&mut out, page);
    out.push_str("</header>\n");

    legend(&mut out, tau_max);

    out.push_str("<section>\n<h2>Text</h2>\n<div class=\"text\">");
    for k in 0..n {
        token_span(&mut out, page, k, tau_max);
    }
    out.push_str("</div>\n</section>\n");

    out.push_str("<section>\n<h2>Backbone</h2>\n");
    let _ = writeln!(
        out,
        "<p class=\"caption\">Arcs above the line: the {} strongest edges, carrying {} of all \
         token-to-token flow; width is proportional to the edge flow &phi;. Below the line: the \
         most probable question-to-answer path (probability {}). Node size follows the flow f.</p>",
        page.backbone.edges.len(),
        percent(kept_share(page.backbone)),
        num(page.backbone.path_probability),
    );
    out.push_str("<div class=\"graph\">");
    backbone_svg(&mut out, page, tau_max);
    out.push_str("</div>\n</section>\n");

    edge_table(&mut out, page);
    out.push_str(
        "<footer>Generated by flowtracer. Shading: throughput &tau; = 2f, relative to the \
         largest outside the answer. Hover a token for its numbers.</footer>\n</body>\n</html>\n",
    );
    out
}

const STYLE: &str = r#"<style>
:root { --ink: #1f2328; --muted: #656d76; --line: #d0d7de; --hub: #6d28d9; --ans: #15803d;
        --q: #dbeafe; --ckpt: #0f172a; --path: #6d28d9; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px 40px; font: 15px/1.5 system-ui, -apple-system, "Segoe UI",
       Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--ink); background: #f6f8fa; }
header, section, footer { max-width: 1180px; margin: 0 auto 18px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 14px 18px; }
h1 { font-size: 22px; margin: 0; }
h2 { font-size: 15px; margin: 0 0 10px; text-transform: uppercase; letter-spacing: .06em;
     color: var(--muted); }
.subtitle { margin: 2px 0 10px; color: var(--muted); font-family: ui-monospace, SFMono-Regular,
            Menlo, Consolas, monospace; font-size: 13px; }
.stats { display: flex; flex-wrap: wrap; gap: 8px; margin: 0; padding: 0; }
.stats div { background: #fff; border: 1px solid var(--line); border-radius: 8px;
             padding: 4px 10px; }
.stats dt { font-size: 11px; color: var(--muted); text-transform: uppercase; letter-spacing: .05em; }
.stats dd { margin: 0; font-weight: 600; font-variant-numeric: tabular-nums; }
.legend { display: flex; flex-wrap: wrap; align-items: center; gap: 14px 22px; font-size: 13px; }
.ramp { display: inline-block; width: 160px; height: 12px; border-radius: 3px; vertical-align: middle;
        border: 1px solid var(--line);
        background: linear-gradient(90deg, #ffffff, #fdd49e, #fc8d59, #d7301f, #7f0000); }
.text { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 15px;
        line-height: 2.1; white-space: pre-wrap; word-break: break-word; }
.tok { padding: 2px 1px; border-radius: 3px; cursor: default; }
.tok:hover { outline: 2px solid #0969da; outline-offset: 1px; }
.tok.prompt { color: var(--muted); }
.tok.q { background: var(--q); color: #1e3a8a; }
.tok.ans { box-shadow: inset 0 0 0 2px var(--ans); }
.tok.hub { font-weight: 700; border-bottom: 3px solid var(--hub); }
.tok.ckpt { outline: 2px dashed var(--ckpt); outline-offset: 1px; }
.tok.hot { color: #fff; }
.sw { display: inline-block; padding: 0 6px; margin-right: 4px; border-radius: 3px;
      font-family: ui-monospace, monospace; }
.graph { overflow-x: auto; }
.graph svg { display: block; }
.graph text { font: 11px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; fill: var(--ink); }
.caption { margin: 0 0 8px; color: var(--muted); font-size: 13px; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 12px 3px 0; text-align: left; border-bottom: 1px solid #eaeef2; }
td.num { text-align: right; }
.bar { display: inline-block; height: 8px; background: #fc8d59; border-radius: 2px; vertical-align: middle; }
footer { color: var(--muted); font-size: 12px; }
</style>
"#;

fn header_stats(out: &mut String, page: &ExplainPage<'_>) {
    let n = page.tokens.len();
    let range = |r: &Range<usize>| format!("{}..{}", r.start, r.end);
    let mut items: Vec<(&str, String)> = vec![
        ("tokens", n.to_string()),
        ("question", range(&page.question)),
        ("answer", range(&page.answer)),
        ("response", range(&page.response)),
        ("hubs", page.backbone.hubs.len().to_string()),
        ("checkpoints", page.backbone.checkpoints.len().to_string()),
        ("path probability", num(page.backbone.path_probability)),
    ];
    items.extend(page.summary.iter().map(|(k, v)| (*k, v.clone())));
    out.push_str("<dl class=\"stats\">");
    for (label, value) in items {
        let _ = write!(
            out,
            "<div><dt>{}</dt><dd>{}</dd></div>",
            escape(label),
            escape(&value)
        );
    }
    out.push_str("</dl>\n");
}

fn legend(out: &mut String, tau_max: f64) {
    let _ = writeln!(
        out,
        "<section class=\"legend\"><span>throughput &tau; <span class=\"sw\">0</span><span class=\"ramp\"></span> \
         <span class=\"sw\">{}</span></span>\
         <span><span class=\"tok q sw\">question</span></span>\
         <span><span class=\"tok ans sw\">answer</span></span>\
         <span><span class=\"tok hub sw\">hub</span> shaped (top &rho; by &tau;)</span>\
         <span><span class=\"tok ckpt sw\">checkpoint</span> f &ge; threshold</span>\
         <span><span class=\"tok prompt sw\">prompt</span></span></section>",
        num(tau_max)
    );
}

fn token_span(out: &mut String, page: &ExplainPage<'_>, k: usize, tau_max: f64) {
    let bb = page.backbone;
    let in_response = page.response.contains(&k);
    let tau = page.throughput.get(k).copied().unwrap_or(0.0);
    let f = page.flow.get(k).copied().unwrap_or(0.0);
    let w = page.weights.get(k).copied().unwrap_or(1.0);
    let hub = bb.hubs.contains(&k);
    let ckpt = bb.checkpoints.contains(&k);
    let mut class = String::from("tok ");
    class.push_str(if in_response { "resp" } else { "prompt" });
    for (on, name) in [
        (page.question.contains(&k), " q"),
        (page.answer.contains(&k), " ans"),
        (hub, " hub"),
        (ckpt, " ckpt"),
        (bb.path.contains(&k), " path"),
    ] {
        if on {
            class.push_str(name);
        }
    }
    let mut style = String::new();
    if in_response {
        let s = shade(tau, tau_max);
        if s > 0.62 {
            class.push_str(" hot");
        }
        if s > 0.0 {
            style = format!(" style=\"background:{}\"", color(s));
        }
    }
    let token = &page.tokens[k];
    let mut title = format!(
        "#{k} {token:?}  \u{3c4}={}  f={}  weight={}",
        num(tau),
        num(f),
        num(w)
    );
    if hub {
        title.push_str("  hub");
    }
    if ckpt {
        title.push_str("  checkpoint");
    }
    let _ = write!(
        out,
        "<span class=\"{class}\" data-i=\"{k}\" data-tau=\"{}\" data-w=\"{}\" title=\"{}\"{style}>{}</span>",
        num(tau),
        num(w),
        escape(&title),
        escape(&display_token(token)),
    );
}

fn backbone_svg(out: &mut String, page: &ExplainPage<'_>, tau_max: f64) {
    let n = page.tokens.len();
    let bb = page.backbone;
    let dx = if n <= 40 {
        28.0
    } else {
        (1100.0 / n as f64).clamp(6.0, 28.0)
    };
    let margin = 24.0;
    let width = (margin * 2.0 + dx * n.saturating_sub(1) as f64).max(320.0);
    let arc_room = 180.0f64.min(dx * n as f64 / 2.0).max(40.0);
    let y = arc_room + 16.0;
    let path_room = 46.0f64;
    let label_every = if n <= 120 { 1 } else { n.div_ceil(120) };
    let height = y + path_room + 90.0;
    let x = |k: usize| margin + dx * k as f64;
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"backbone\" width=\"{w:.0}\" height=\"{h:.0}\" \
         viewBox=\"0 0 {w:.0} {h:.0}\" role=\"img\" aria-label=\"backbone of the flow\">",
        w = width,
        h = height
    );
    // The token line.
    let _ = writeln!(
        out,
        "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#d0d7de\" stroke-width=\"1.5\"/>",
        x(0) - 8.0,
        x(n.saturating_sub(1)) + 8.0
    );
    // Kept edges above the line, strongest drawn last (on top).
    let phi_max = bb.edges.iter().map(|e| e.flow).fold(0.0f64, f64::max);
    out.push_str("<g class=\"edges\" fill=\"none\" stroke-linecap=\"round\">\n");
    for e in bb.edges.iter().rev() {
        if e.from >= n || e.to >= n || e.from >= e.to {
            continue;
        }
        let (x0, x1) = (x(e.from), x(e.to));
        let rx = (x1 - x0) / 2.0;
        let ry = rx.min(arc_room - 6.0);
        let rel = if phi_max > 0.0 { e.flow / phi_max } else { 0.0 };
        let stroke = (10.0 * rel).max(0.6);
        let _ = writeln!(
            out,
            "<path class=\"edge\" data-from=\"{}\" data-to=\"{}\" d=\"M{x0:.1},{y:.1} A{rx:.1},{ry:.1} 0 0,1 {x1:.1},{y:.1}\" \
             stroke=\"{}\" stroke-opacity=\"0.8\" stroke-width=\"{stroke:.2}\"><title>{} \u{2192} {}: \u{3c6} = {}</title></path>",
            e.from,
            e.to,
            color(0.25 + 0.75 * rel),
            e.from,
            e.to,
            num(e.flow)
        );
    }
    out.push_str("</g>\n");
    // The most probable path below the line.
    out.push_str("<g class=\"path\" fill=\"none\" stroke=\"#6d28d9\" stroke-width=\"2\" stroke-dasharray=\"5 3\">\n");
    for pair in bb.path.windows(2) {
        let (i, k) = (pair[0], pair[1]);
        if i >= n || k >= n || i >= k {
            continue;
        }
        let (x0, x1) = (x(i), x(k));
        let rx = (x1 - x0) / 2.0;
        let ry = rx.min(path_room - 8.0);
        let _ = writeln!(
            out,
            "<path d=\"M{x0:.1},{y:.1} A{rx:.1},{ry:.1} 0 0,0 {x1:.1},{y:.1}\"><title>path {i} \u{2192} {k}</title></path>"
        );
    }
    out.push_str("</g>\n");
    // Nodes and labels.
    out.push_str("<g class=\"nodes\">\n");
    for k in 0..n {
        let f = page.flow.get(k).copied().unwrap_or(0.0);
        let tau = page.throughput.get(k).copied().unwrap_or(0.0);
        let r = 2.5 + 4.5 * f.clamp(0.0, 1.0);
        let fill = if page.response.contains(&k) {
            color(shade(tau, tau_max))
        } else if page.question.contains(&k) {
            String::from("#93c5fd")
        } else {
            String::from("#e5e7eb")
        };
        let (stroke, sw) = if bb.checkpoints.contains(&k) {
            ("#0f172a", 2.0)
        } else if bb.hubs.contains(&k) {
            ("#6d28d9", 2.0)
        } else if page.answer.contains(&k) {
            ("#15803d", 2.0)
        } else {
            ("#8c959f", 0.8)
        };
        let token = &page.tokens[k];
        let _ = writeln!(
            out,
            "<circle cx=\"{:.1}\" cy=\"{y:.1}\" r=\"{r:.1}\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"{sw}\">\
             <title>#{k} {}: f = {}</title></circle>",
            x(k),
            escape(&format!("{token:?}")),
            num(f)
        );
        let labelled = k % label_every == 0
            || bb.hubs.contains(&k)
            || bb.path.contains(&k)
            || page.answer.contains(&k);
        if labelled {
            let mut label: String = display_token(token).trim().chars().take(12).collect();
            if label.is_empty() {
                label = String::from("\u{b7}");
            }
            let weight = if bb.hubs.contains(&k) {
                " font-weight=\"700\" fill=\"#6d28d9\""
            } else if page.answer.contains(&k) {
                " font-weight=\"700\" fill=\"#15803d\""
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "<text transform=\"translate({:.1},{:.1}) rotate(50)\"{weight}>{}</text>",
                x(k) - 3.0,
                y + path_room,
                escape(&label)
            );
        }
    }
    out.push_str("</g>\n</svg>\n");
}

fn edge_table(out: &mut String, page: &ExplainPage<'_>) {
    let bb = page.backbone;
    out.push_str("<section>\n<h2>Kept edges</h2>\n");
    if bb.edges.is_empty() {
        out.push_str("<p class=\"caption\">No token-to-token edge carries flow.</p>\n</section>\n");
        return;
    }
    out.push_str(
        "<table>\n<thead><tr><th>from</th><th>to</th><th>&phi;</th><th>share</th><th></th></tr></thead>\n<tbody>\n",
    );
    let phi_max = bb.edges.iter().map(|e| e.flow).fold(0.0f64, f64::max);
    let label = |k: usize| {
        page.tokens
            .get(k)
            .map_or_else(String::new, |t| escape(&format!("{t:?}")))
    };
    for e in &bb.edges {
        let share = if bb.total_edge_flow > 0.0 {
            e.flow / bb.total_edge_flow
        } else {
            0.0
        };
        let bar = if phi_max > 0.0 {
            120.0 * e.flow / phi_max
        } else {
            0.0
        };
        let _ = writeln!(
            out,
            "<tr><td>#{} {}</td><td>#{} {}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td><span class=\"bar\" style=\"width:{bar:.0}px\"></span></td></tr>",
            e.from,
            label(e.from),
            e.to,
            label(e.to),
            num(e.flow),
            percent(share)
        );
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

/// Fraction of the total edge flow carried by the kept edges.
fn kept_share(bb: &Backbone) -> f64 {
    if bb.total_edge_flow > 0.0 {
        bb.edges.iter().map(|e| e.flow).sum::<f64>() / bb.total_edge_flow
    } else {
        0.0
    }
}

/// `tau / tau_max` in `[0, 1]` (0 for non-finite values).
fn shade(tau: f64, tau_max: f64) -> f64 {
    if tau_max > 0.0 && tau.is_finite() {
        (tau / tau_max).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// A sequential white-to-dark-red colour for `s` in `[0, 1]` (ColorBrewer OrRd stops).
fn color(s: f64) -> String {
    const STOPS: [(f64, [f64; 3]); 5] = [
        (0.0, [255.0, 255.0, 255.0]),
        (0.25, [253.0, 212.0, 158.0]),
        (0.5, [252.0, 141.0, 89.0]),
        (0.75, [215.0, 48.0, 31.0]),
        (1.0, [127.0, 0.0, 0.0]),
    ];
    let s = if s.is_finite() {
        s.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let mut rgb = STOPS[4].1;
    for pair in STOPS.windows(2) {
        let ((s0, c0), (s1, c1)) = (pair[0], pair[1]);
        if s <= s1 {
            let t = (s - s0) / (s1 - s0);
            for (c, (a, b)) in rgb.iter_mut().zip(c0.iter().zip(c1)) {
                *c = a + (b - a) * t;
            }
            break;
        }
    }
    format!(
        "#{:02x}{:02x}{:02x}",
        rgb[0].round() as u8,
        rgb[1].round() as u8,
        rgb[2].round() as u8
    )
}

/// A number with four decimals (scientific notation for tiny or huge values).
fn num(v: f64) -> String {
    if v == 0.0 || (1e-3..1e6).contains(&v.abs()) {
        format!("{v:.4}")
    } else if v.is_finite() {
        format!("{v:.3e}")
    } else {
        format!("{v}")
    }
}

fn percent(v: f64) -> String {
    format!("{:.1}%", 100.0 * v)
}

/// The text a token stands for: BPE space/newline markers become whitespace.
fn display_token(token: &str) -> String {
    token
        .chars()
        .map(|c| match c {
            '\u{120}' | '\u{2581}' => ' ',
            '\u{10a}' => '\n',
            c => c,
        })
        .collect()
}

/// Escapes text for HTML element content and double- or single-quoted attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
