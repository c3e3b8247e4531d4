//! Aggregation over arbitrary shapes, layouts and layer selections against the naive mean
//! (`reference::aggregate`), with errors in the order of [method §13](docs/method.md#s13).
#![no_main]

use core::fmt;

use arbitrary::Arbitrary;
use flowtracer_core::aggregate::{LayerSelection, Layout, aggregate, select_layers};
use flowtracer_core::{Error, Position};
use flowtracer_fuzz::{Special, close, literal};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary)]
struct Input {
    layers: u8,
    heads: u8,
    n: u8,
    packed: bool,
    selection: Sel,
    values: Vec<u8>,
    defects: Vec<(u16, Special)>,
    trim: u8,
}

#[derive(Arbitrary, Debug, Clone)]
enum Sel {
    Middle,
    All,
    Range(u8, u8),
    List(Vec<u8>),
    Spaced(u8),
}

struct Case {
    layers: usize,
    heads: usize,
    n: usize,
    layout: Layout,
    selection: LayerSelection,
    data: Vec<f64>,
}

impl Input {
    fn case(&self) -> Case {
        let layers = usize::from(self.layers % 5);
        let heads = usize::from(self.heads % 4);
        let n = usize::from(self.n % 7);
        let layout = if self.packed { Layout::Packed } else { Layout::Dense };
        let len = (layout.matrix_len(n) * heads * layers).saturating_sub(usize::from(self.trim % 8 / 7));
        let mut data: Vec<f64> = (0..len)
            .map(|j| if self.values.is_empty() { 0.5 } else { f64::from(self.values[j % self.values.len()]) / 255.0 })
            .collect();
        if len > 0 {
            for &(at, s) in &self.defects {
                data[usize::from(at) % len] = s.value(false);
            }
        }
        let selection = match &self.selection {
            Sel::Middle => LayerSelection::Middle,
            Sel::All => LayerSelection::All,
            Sel::Range(a, b) => LayerSelection::Range(usize::from(a % 6)..usize::from(b % 6)),
            Sel::List(l) => LayerSelection::List(l.iter().take(6).map(|&x| usize::from(x % 6)).collect()),
            Sel::Spaced(c) => LayerSelection::Spaced(usize::from(c % 5)),
        };
        Case { layers, heads, n, layout, selection, data }
    }
}

impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.case();
        writeln!(f, "// Reproduction:")?;
        write!(f, "let data: Vec<f64> = vec![")?;
        for x in &c.data {
            write!(f, "{}, ", literal(*x, "f64"))?;
        }
        writeln!(f, "];")?;
        write!(
            f,
            "let result = flowtracer_core::aggregate::aggregate(&data, {}, {}, {}, flowtracer_core::aggregate::Layout::{:?}, &flowtracer_core::aggregate::LayerSelection::{:?});",
            c.layers, c.heads, c.n, c.layout, c.selection
        )
    }
}

fuzz_target!(|input: Input| {
    let c = input.case();
    let got = aggregate(&c.data, c.layers, c.heads, c.n, c.layout, &c.selection);
    let m = c.layout.matrix_len(c.n);
    let expected_len = m * c.heads * c.layers;
    if c.data.len() != expected_len {
        assert_eq!(got, Err(Error::ShapeMismatch { what: "attention", expected: expected_len, actual: c.data.len() }));
        return;
    }
    if c.n == 0 {
        assert_eq!(got, Err(Error::EmptySequence));
        return;
    }
    if c.layers == 0 || c.heads == 0 {
        assert!(matches!(got, Err(Error::ZeroDimension { .. })), "{got:?}");
        return;
    }
    let selected = match select_layers(c.layers, &c.selection) {
        Ok(s) => s,
        Err(e) => {
            assert_eq!(got, Err(e));
            return;
        }
    };
    // Expand to dense [layers][heads][N][N] and find the first defect among selected layers.
    let mut dense = vec![0.0; c.layers * c.heads * c.n * c.n];
    let mut first_bad: Option<Error> = None;
    let mut first_neg: Option<Error> = None;
    let mut sorted = selected.clone();
    sorted.sort_unstable();
    for l in 0..c.layers {
        for h in 0..c.heads {
            for k in 0..c.n {
                for i in 0..=k {
                    let off = (l * c.heads + h) * m + c.layout.row_offset(c.n, k) + i;
                    let x = c.data[off];
                    dense[((l * c.heads + h) * c.n + k) * c.n + i] = x;
                    if !sorted.contains(&l) {
                        continue;
                    }
                    let position = Position { layer: Some(l), head: Some(h), row: k, col: i };
                    if !x.is_finite() && first_bad.is_none() {
                        first_bad = Some(Error::NonFinite { position });
                    }
                    if x < 0.0 && first_neg.is_none() {
                        first_neg = Some(Error::Negative { position, value: x });
                    }
                }
            }
        }
    }
    if let Some(e) = first_bad.or(first_neg) {
        assert_eq!(got, Err(e));
        return;
    }
    let got = got.expect("valid input rejected");
    let naive = flowtracer_core::reference::aggregate(&dense, c.heads, c.n, &selected);
    for (j, (x, y)) in got.iter().zip(&naive).enumerate() {
        assert!(close(*x, *y, 1e-300, 1e-12) || (x.is_infinite() && y.is_infinite()), "Ā[{j}] {x} vs naive {y}");
    }
});
