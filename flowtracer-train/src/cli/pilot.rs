//! The pilot rule of issue 18 ([`plateau`]): where a pilot run's held-out accuracy stops
//! rising, which fixes a study's number of GRPO steps; and its paragraph in `compare`'s
//! report.

use core::fmt::Write as _;

use flowtracer_core::baselines::CreditMethod;

/// The window of the pilot rule: the slope at step `s` is fitted on the curve's points in
/// `s - PLATEAU_WINDOW ..= s`.
pub const PLATEAU_WINDOW: usize = 50;

/// Two-sided 95% quantiles of Student's t for 1..=10 degrees of freedom (beyond: 1.96 is
/// within 12% of every larger quantile; the rule is conservative there by using 2.228).
const T95: [f64; 10] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
];

/// One window's slope: its last step, the slope, and its 95% interval (points per 100
/// steps).
pub type Slope = (usize, f64, f64, f64);

/// The pilot rule of issue 18: the ordinary least-squares slope of a held-out accuracy
/// curve over the last [`PLATEAU_WINDOW`] steps at each evaluation step (points of accuracy
/// per 100 steps, with its 95% confidence interval from Student's t on `n - 2` degrees of
/// freedom), and the first step from which on every window's interval contains 0 (the curve
/// has flattened and stays flat), if any; when that is only the last window, the pilot has
/// not shown a plateau (say so). Points at step 0 (the warm-up) are not used; a window needs
/// at least 3 points.
///
/// # Complexity
///
/// O(points × window points).
pub fn plateau(curve: &[(usize, f64)]) -> (Option<usize>, Vec<Slope>) {
    let pts: Vec<(f64, f64)> = curve
        .iter()
        .filter(|(s, _)| *s > 0)
        .map(|&(s, a)| (s as f64, 100.0 * a))
        .collect();
    let mut rows = Vec::new();
    let mut first = None;
    for &(end, _) in &pts {
        if end < PLATEAU_WINDOW as f64 {
            continue;
        }
        let w: Vec<(f64, f64)> = pts
            .iter()
            .copied()
            .filter(|(x, _)| *x >= end - PLATEAU_WINDOW as f64 && *x <= end)
            .collect();
        let n = w.len();
        if n < 3 {
            continue;
        }
        let mx = w.iter().map(|p| p.0).sum::<f64>() / n as f64;
        let my = w.iter().map(|p| p.1).sum::<f64>() / n as f64;
        let sxx: f64 = w.iter().map(|p| (p.0 - mx).powi(2)).sum();
        let sxy: f64 = w.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let b = sxy / sxx;
        let ssr: f64 = w.iter().map(|p| (p.1 - my - b * (p.0 - mx)).powi(2)).sum();
        let se = (ssr / (n - 2) as f64 / sxx).sqrt();
        let t = T95[(n - 3).min(T95.len() - 1)];
        let (lo, hi) = (100.0 * (b - t * se), 100.0 * (b + t * se));
        rows.push((end as usize, 100.0 * b, lo, hi));
    }
    // The first window from which on every interval contains 0: a single flat window
    // followed by a rise is noise, not a plateau.
    for &(end, _, lo, hi) in rows.iter().rev() {
        if lo > 0.0 || hi < 0.0 {
            break;
        }
        first = Some(end);
    }
    (first, rows)
}

/// The report's pilot paragraph: [`plateau`] on `curve`, the mean held-out curve of
/// `method` over its `seeds` runs.
pub(crate) fn plateau_report(method: CreditMethod, seeds: usize, curve: &[(usize, f64)]) -> String {
    let (flat, rows) = plateau(curve);
    let mut out = format!(
        "**Pilot rule** (`{method}`, mean over {} seeds): OLS slope of the held-out sampled accuracy over the last {PLATEAU_WINDOW} steps, points per 100 steps with its 95% interval: ",
        seeds
    );
    let cells: Vec<String> = rows
        .iter()
        .map(|(s, b, lo, hi)| format!("step {s}: {b:+.1} [{lo:+.1}, {hi:+.1}]"))
        .collect();
    out.push_str(&cells.join("; "));
    let last = rows.last().map(|r| r.0);
    match flat {
        Some(s) if Some(s) != last => {
            let _ = write!(out, ". The interval contains 0 from step {s} on.");
        }
        Some(s) => {
            let _ = write!(
                out,
                ". Only the last window (step {s}) contains 0: no plateau within the run."
            );
        }
        None => out.push_str(". The interval does not contain 0 at the end of the run."),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::plateau;

    /// A line rising 1 point per 10 steps has slope 10 points per 100 steps and a zero-width
    /// interval (never flat); a constant curve is flat at the first full window (step 50);
    /// a curve that rises then stays flat is first flat where its window is flat.
    #[test]
    fn plateau_on_hand_made_curves() {
        const TOL: f64 = 1e-9;
        let rising: Vec<(usize, f64)> = (0..=10).map(|i| (10 * i, 0.01 * i as f64)).collect();
        let (flat, rows) = plateau(&rising);
        assert_eq!(flat, None);
        assert_eq!(rows.len(), 6);
        for (s, b, lo, hi) in rows {
            assert!(s >= 50);
            assert!((b - 10.0).abs() < TOL && (lo - 10.0).abs() < TOL && (hi - 10.0).abs() < TOL);
        }
        let constant: Vec<(usize, f64)> = (0..=10).map(|i| (10 * i, 0.3)).collect();
        assert_eq!(plateau(&constant).0, Some(50));
        let knee: Vec<(usize, f64)> = (0..=20).map(|i| (10 * i, 0.01 * i.min(8) as f64)).collect();
        // Hand-computed: the window 60..=110 (6, 7, 8, 8, 8, 8 points) has slope 3.71 per
        // 100 steps, interval [0.25, 7.17]; the window 70..=120 (7, 8, 8, 8, 8, 8) has 1.43,
        // interval [-0.86, 3.72]: the first that contains 0.
        assert_eq!(plateau(&knee).0, Some(120));
        let (_, rows) = plateau(&knee);
        let at = |s: usize| rows.iter().find(|r| r.0 == s).copied().unwrap();
        let (_, b, lo, _) = at(110);
        assert!((b - 65.0 / 17.5).abs() < TOL && lo > 0.0);
        let (_, b, lo, hi) = at(120);
        assert!((b - 25.0 / 17.5).abs() < TOL && lo < 0.0 && hi > 0.0);
        // A flat window followed by a rise is not a plateau: the Countdown pilot's curve
        // (docs/training/pilot/countdown) is flat at 70..=100 and rises again at 110.
        let pilot = [
            0.2045, 0.2475, 0.26375, 0.27625, 0.29625, 0.29, 0.2825, 0.30375, 0.2825, 0.30375,
            0.32875, 0.34625, 0.325, 0.3525, 0.355, 0.32875,
        ];
        let curve: Vec<(usize, f64)> = pilot
            .iter()
            .enumerate()
            .map(|(i, &a)| (10 * i, a))
            .collect();
        let (flat, rows) = plateau(&curve);
        assert_eq!(flat, Some(150));
        let contains = |s: usize| rows.iter().any(|r| r.0 == s && r.2 <= 0.0 && r.3 >= 0.0);
        assert!(contains(70) && !contains(110));
    }
}
