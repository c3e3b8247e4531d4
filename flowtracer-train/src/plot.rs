//! Learning-curve SVGs with plotters' SVG backend (no system fonts needed), drawn in memory
//! and written with [`write_atomic`].

use std::path::Path;

use plotters::prelude::*;

use crate::atomic::write_atomic;
use crate::error::FileError;

/// One curve: a label, points, and an optional ± band (same x as `points`).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// `(x, y)` points.
    pub points: Vec<(f64, f64)>,
    /// Half-width of a shaded band around each point (e.g. the std over seeds).
    pub band: Option<Vec<f64>>,
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Draws the series into an SVG file.
///
/// # Errors
///
/// A [`FileError`] naming `path` when drawing (action "draw") or writing fails.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), FileError> {
    let svg = draw(title, x_label, y_label, series).map_err(|e| FileError::new("draw", path, e))?;
    write_atomic(path, svg.as_bytes())
}

/// One group of a bar chart: a label under it and one bar per series, each a value with a
/// `(low, high)` interval drawn as a whisker.
#[derive(Debug, Clone, PartialEq)]
pub struct BarGroup {
    /// Label under the group.
    pub label: String,
    /// `(value, (low, high))` per series, in the order of the series names.
    pub bars: Vec<(f64, (f64, f64))>,
}

/// Draws a grouped bar chart with interval whiskers into an SVG file.
///
/// # Errors
///
/// A [`FileError`] naming `path` when drawing (action "draw") or writing fails.
pub fn bar_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    series: &[&str],
    groups: &[BarGroup],
) -> Result<(), FileError> {
    let svg =
        draw_bars(title, y_label, series, groups).map_err(|e| FileError::new("draw", path, e))?;
    write_atomic(path, svg.as_bytes())
}

fn draw_bars(
    title: &str,
    y_label: &str,
    series: &[&str],
    groups: &[BarGroup],
) -> Result<String, String> {
    let err = |e: &dyn core::fmt::Display| e.to_string();
    let y_max = groups
        .iter()
        .flat_map(|g| g.bars.iter().map(|b| b.1.1.max(b.0)))
        .fold(0.05f64, f64::max)
        * 1.1;
    let n = groups.len().max(1) as f64;
    let mut svg = String::new();
    let root = SVGBackend::with_string(&mut svg, (1000, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(10)
        .y_label_area_size(55)
        .build_cartesian_2d(-0.5..n - 0.5, (-0.08 * y_max)..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(y_label)
        .draw()
        .map_err(|e| err(&e))?;
    let k = series.len().max(1) as f64;
    let width = 0.8 / k;
    for (s, name) in series.iter().enumerate() {
        let color = COLORS[s % COLORS.len()];
        let left = |i: usize| i as f64 - 0.4 + s as f64 * width;
        chart
            .draw_series(groups.iter().enumerate().filter_map(|(i, g)| {
                g.bars.get(s).map(|&(v, _)| {
                    Rectangle::new(
                        [(left(i) + 0.01, 0.0), (left(i) + width - 0.01, v)],
                        color.mix(0.8).filled(),
                    )
                })
            }))
            .map_err(|e| err(&e))?
            .label(name.to_string())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
        chart
            .draw_series(groups.iter().enumerate().filter_map(|(i, g)| {
                g.bars.get(s).map(|&(_, (lo, hi))| {
                    let x = left(i) + width / 2.0;
                    PathElement::new(vec![(x, lo), (x, hi)], BLACK.stroke_width(1))
                })
            }))
            .map_err(|e| err(&e))?;
    }
    chart
        .draw_series(groups.iter().enumerate().map(|(i, g)| {
            Text::new(
                g.label.clone(),
                (i as f64 - 0.4, -0.03 * y_max),
                ("sans-serif", 13),
            )
        }))
        .map_err(|e| err(&e))?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    drop(chart);
    drop(root);
    Ok(svg)
}

/// The SVG text of the chart.
fn draw(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<String, String> {
    let err = |e: &dyn core::fmt::Display| e.to_string();
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for s in series {
        for (i, &(x, y)) in s.points.iter().enumerate() {
            let b = s.band.as_ref().map_or(0.0, |b| b[i]);
            x_max = x_max.max(x);
            y_min = y_min.min(y - b);
            y_max = y_max.max(y + b);
        }
    }
    if !y_min.is_finite() {
        (y_min, y_max) = (0.0, 1.0);
    }
    let pad = ((y_max - y_min) * 0.05).max(0.01);
    let mut svg = String::new();
    let root = SVGBackend::with_string(&mut svg, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..x_max, (y_min - pad)..(y_max + pad))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(|e| err(&e))?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        if let Some(b) = &s.band {
            let mut poly: Vec<(f64, f64)> = s
                .points
                .iter()
                .zip(b)
                .map(|(&(x, y), &d)| (x, y + d))
                .collect();
            poly.extend(s.points.iter().zip(b).rev().map(|(&(x, y), &d)| (x, y - d)));
            chart
                .draw_series(core::iter::once(Polygon::new(
                    poly,
                    color.mix(0.15).filled(),
                )))
                .map_err(|e| err(&e))?;
        }
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    drop(chart);
    drop(root);
    Ok(svg)
}
