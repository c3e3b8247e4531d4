//! Aggregation of per-layer, per-head attention into `Ā` ([method §2](docs/method.md#s2)).
//!
//! `Ā[k][i] = mean over selected layers l, mean over heads h of P[l][h][k][i]`.
//!
//! Inputs are `[layers][heads][N][N]` dense row-major, or the same with each matrix packed
//! as its lower-triangular rows (row `k` holds `k + 1` values; `N (N + 1) / 2` per matrix).
//! The output is always dense `N x N` with zeros above the diagonal. Sums are accumulated in
//! `F` in input order (layer, head, row), then scaled by `1 / (layers · heads)`: one
//! streaming read of the selected input, in the order it lies in memory.

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;

use crate::error::{Error, Position};
use crate::float::FlowFloat;
use crate::kernels::{add_min, add4_min, all_finite};

/// Which layers enter the mean ([method §2](docs/method.md#s2)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LayerSelection {
    /// The middle band `floor(L/3) .. floor(2L/3)` (default; all layers if the band is empty).
    #[default]
    Middle,
    /// Every layer.
    All,
    /// A half-open range of layers.
    Range(Range<usize>),
    /// An explicit list of distinct layers.
    List(Vec<usize>),
    /// `n` layers evenly spaced inside the middle band:
    /// `lo + floor(j (hi - 1 - lo) / (n - 1))` for `j = 0..n` (`n >= 2`), or the band's
    /// middle layer `lo + floor((hi - 1 - lo) / 2)` for `n = 1`.
    Spaced(usize),
}

/// `middle`, `all`, `a..b` (a half-open range), `1,3,5` (a list; one number is a list of
/// one) or `spaced:n`: the names the CLI's `--layers` and the Python package accept.
impl core::fmt::Display for LayerSelection {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LayerSelection::Middle => f.write_str("middle"),
            LayerSelection::All => f.write_str("all"),
            LayerSelection::Range(r) => write!(f, "{}..{}", r.start, r.end),
            LayerSelection::List(list) => {
                for (i, l) in list.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{l}")?;
                }
                Ok(())
            }
            LayerSelection::Spaced(n) => write!(f, "spaced:{n}"),
        }
    }
}

impl core::str::FromStr for LayerSelection {
    type Err = Error;

    /// # Errors
    ///
    /// [`Error::UnknownName`] (`what = "layers"`) for text that is none of the forms.
    fn from_str(s: &str) -> Result<Self, Error> {
        const FORMS: &[&str] = &["middle", "all", "a..b", "1,3,5", "spaced:n"];
        let bad = || crate::vocabulary::unknown("layers", s, FORMS);
        let number = |t: &str| {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            t.parse::<usize>().map_err(|_| bad())
        };
        let t = s.trim();
        Ok(match t {
            "middle" => LayerSelection::Middle,
            "all" => LayerSelection::All,
            _ => {
                if let Some(n) = t.strip_prefix("spaced:") {
                    LayerSelection::Spaced(number(n.trim())?)
                } else if let Some((a, b)) = t.split_once("..") {
                    LayerSelection::Range(number(a.trim())?..number(b.trim())?)
                } else {
                    LayerSelection::List(
                        t.split(',')
                            .map(|x| number(x.trim()))
                            .collect::<Result<_, _>>()?,
                    )
                }
            }
        })
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for LayerSelection {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for LayerSelection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <alloc::string::String as serde::Deserialize>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The middle band `floor(L/3) .. floor(2L/3)`, or `0..L` if that band is empty.
fn middle_band(num_layers: usize) -> Range<usize> {
    let band = num_layers / 3..2 * num_layers / 3;
    if band.is_empty() { 0..num_layers } else { band }
}

/// Resolves a [`LayerSelection`] against a model with `num_layers` layers.
///
/// # Errors
///
/// [`Error::ZeroDimension`] if `num_layers == 0`; [`Error::InvalidLayerSelection`] for an
/// empty selection, a layer `>= num_layers`, a repeated layer in a list, or more spaced
/// layers than the band holds.
///
/// # Complexity
///
/// O(L).
///
/// # Examples
///
/// ```
/// use flowtracer_core::aggregate::{select_layers, LayerSelection};
/// assert_eq!(select_layers(12, &LayerSelection::Middle)?, vec![4, 5, 6, 7]);
/// assert_eq!(select_layers(12, &LayerSelection::Spaced(3))?, vec![4, 5, 7]);
/// assert_eq!(select_layers(1, &LayerSelection::Middle)?, vec![0]);
/// # Ok::<(), flowtracer_core::Error>(())
/// ```
pub fn select_layers(num_layers: usize, selection: &LayerSelection) -> Result<Vec<usize>, Error> {
    if num_layers == 0 {
        return Err(Error::ZeroDimension { what: "layers" });
    }
    let invalid = |reason, value| Error::InvalidLayerSelection {
        reason,
        value,
        num_layers,
    };
    let layers: Vec<usize> = match selection {
        LayerSelection::Middle => middle_band(num_layers).collect(),
        LayerSelection::All => (0..num_layers).collect(),
        LayerSelection::Range(r) => {
            if r.is_empty() {
                return Err(invalid("empty layer range", r.start));
            }
            if r.end > num_layers {
                return Err(invalid("layer range ends past the last layer", r.end));
            }
            r.clone().collect()
        }
        LayerSelection::List(list) => {
            if list.is_empty() {
                return Err(invalid("empty layer list", 0));
            }
            for (j, &l) in list.iter().enumerate() {
                if l >= num_layers {
                    return Err(invalid("layer out of range", l));
                }
                if list[..j].contains(&l) {
                    return Err(invalid("layer listed twice", l));
                }
            }
            list.clone()
        }
        LayerSelection::Spaced(count) => {
            let band = middle_band(num_layers);
            let (lo, hi) = (band.start, band.end);
            match *count {
                0 => return Err(invalid("zero spaced layers", 0)),
                c if c > hi - lo => {
                    return Err(invalid("more spaced layers than the band holds", c));
                }
                1 => vec![lo + (hi - 1 - lo) / 2],
                c => (0..c).map(|j| lo + j * (hi - 1 - lo) / (c - 1)).collect(),
            }
        }
    };
    Ok(layers)
}

/// How each `N x N` attention matrix is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Layout {
    /// Row-major `N x N` (entries above the diagonal ignored).
    #[default]
    Dense,
    /// Lower-triangular rows back to back: row `k` holds keys `0..=k`.
    Packed,
}

impl Layout {
    /// Number of values one `N x N` matrix occupies.
    pub fn matrix_len(self, n: usize) -> usize {
        match self {
            Layout::Dense => n.saturating_mul(n),
            Layout::Packed => n.saturating_mul(n.saturating_add(1)) / 2,
        }
    }

    /// Offset of row `k` inside one matrix.
    #[inline]
    pub fn row_offset(self, n: usize, k: usize) -> usize {
        match self {
            Layout::Dense => k * n,
            Layout::Packed => k * (k + 1) / 2,
        }
    }
}

/// Streams attention one layer at a time into the running sum of `Ā`, so a trainer can feed
/// layers as the forward pass produces them and never hold all of them.
///
/// Data defects are recorded as they stream by and reported by [`finish`](Self::finish) in
/// the order of [method §13](docs/method.md#s13) (the first non-finite entry wins over any negative one, whatever
/// layer it is in).
#[derive(Debug, Clone)]
pub struct LayerAccumulator<F> {
    heads: usize,
    n: usize,
    layout: Layout,
    layers: usize,
    sum: Vec<F>,
    defects: Defects,
}

/// The first defects seen: within a layer the lowest `(head, row, col)`, across layers the
/// one of the layer added first.
#[derive(Debug, Clone, Copy, Default)]
struct Defects {
    non_finite: Option<Position>,
    negative: Option<(Position, f64)>,
}

impl Defects {
    /// Takes `other`'s defects (all of layer `layer`) where they come first.
    fn merge(&mut self, other: Defects, layer: usize) {
        let wins = |old: &Position, new: &Position| {
            old.layer == Some(layer) && (new.head, new.row, new.col) < (old.head, old.row, old.col)
        };
        if let Some(p) = other.non_finite
            && self.non_finite.as_ref().is_none_or(|old| wins(old, &p))
        {
            self.non_finite = Some(p);
        }
        if let Some((p, v)) = other.negative
            && self.negative.as_ref().is_none_or(|(old, _)| wins(old, &p))
        {
            self.negative = Some((p, v));
        }
    }
}

impl<F: FlowFloat> LayerAccumulator<F> {
    /// An accumulator for `heads` heads of `n x n` attention stored in `layout`.
    ///
    /// # Errors
    ///
    /// [`Error::EmptySequence`] if `n == 0`, [`Error::ZeroDimension`] if `heads == 0`.
    pub fn new(heads: usize, n: usize, layout: Layout) -> Result<Self, Error> {
        if n == 0 {
            return Err(Error::EmptySequence);
        }
        if heads == 0 {
            return Err(Error::ZeroDimension { what: "heads" });
        }
        Ok(Self {
            heads,
            n,
            layout,
            layers: 0,
            sum: vec![F::zero(); n * n],
            defects: Defects::default(),
        })
    }

    /// As [`new`](Self::new), reusing `buffer`'s allocation (for example the `Ā` that
    /// [`finish`](Self::finish) returned for the previous sequence): a caller that
    /// aggregates sequence after sequence pays the operating system's zeroing of fresh
    /// pages once, not per sequence.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    ///
    /// # Complexity
    ///
    /// O(N²) to zero the buffer; allocates only if `buffer` holds fewer than `N²` values.
    pub fn with_buffer(
        heads: usize,
        n: usize,
        layout: Layout,
        mut buffer: Vec<F>,
    ) -> Result<Self, Error> {
        if n == 0 {
            return Err(Error::EmptySequence);
        }
        if heads == 0 {
            return Err(Error::ZeroDimension { what: "heads" });
        }
        buffer.clear();
        buffer.resize(n * n, F::zero());
        Ok(Self {
            heads,
            n,
            layout,
            layers: 0,
            sum: buffer,
            defects: Defects::default(),
        })
    }

    /// Adds layer `layer_index` (its `[heads][N][N]` values) to the sum.
    ///
    /// `layer_index` is only used to report positions.
    ///
    /// # Errors
    ///
    /// [`Error::ShapeMismatch`] if `data` is not `heads` matrices long.
    ///
    /// # Complexity
    ///
    /// O(H · N²), one streaming read of `data`; no allocation.
    pub fn add_layer(&mut self, layer_index: usize, data: &[F]) -> Result<(), Error> {
        let m = self.layout.matrix_len(self.n);
        let expected = m.saturating_mul(self.heads);
        if data.len() != expected {
            return Err(Error::ShapeMismatch {
                what: "layer attention",
                expected,
                actual: data.len(),
            });
        }
        let (n, heads, layout) = (self.n, self.heads, self.layout);
        let mut found = Defects::default();
        // Row by row across the heads: row `k` of the sum stays in cache while every head
        // adds into it, so the sum is streamed once per layer. Packed input goes four heads
        // per sweep (one load and store of the sum row per four heads); dense input one head
        // at a time, because four head rows `N²` values apart, each starting a new page
        // every row, measured slower at N = 8192 (docs/perf/passes-table.md). Only the
        // minimum is kept per entry; a non-finite entry makes the row of the sum
        // non-finite, checked once per row. Either sends the row's heads to `scan`.
        for (k, acc) in self.sum.chunks_mut(n).enumerate() {
            let off = layout.row_offset(n, k);
            let acc = &mut acc[..=k];
            let row = |head: usize| &data[head * m + off..=head * m + off + k];
            let mut min = F::zero();
            let mut head = 0;
            if layout == Layout::Packed {
                while head + 4 <= heads {
                    let rows = core::array::from_fn(|g| row(head + g));
                    min = min.min(add4_min(rows, acc));
                    head += 4;
                }
            }
            for h in head..heads {
                min = min.min(add_min(row(h), acc));
            }
            if min < F::zero() || !all_finite(acc) {
                for h in 0..heads {
                    scan(&mut found, layer_index, h, k, row(h));
                }
            }
        }
        self.defects.merge(found, layer_index);
        self.layers += 1;
        Ok(())
    }

    /// Number of layers added so far.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// The mean `Ā`, dense `N x N` with zeros above the diagonal.
    ///
    /// # Errors
    ///
    /// [`Error::ZeroDimension`] if no layer was added; [`Error::NonFinite`] then
    /// [`Error::Negative`] for the first defect seen (in the order layers were added).
    ///
    /// # Complexity
    ///
    /// O(N²), in place.
    pub fn finish(self) -> Result<Vec<F>, Error> {
        if self.layers == 0 {
            return Err(Error::ZeroDimension { what: "layers" });
        }
        if let Some(position) = self.defects.non_finite {
            return Err(Error::NonFinite { position });
        }
        if let Some((position, value)) = self.defects.negative {
            return Err(Error::Negative { position, value });
        }
        let scale = F::from_f64_lossy(1.0 / (self.layers * self.heads) as f64);
        let mut sum = self.sum;
        // The lower triangles only: the zeros above the diagonal stay zero, and their pages
        // of the freshly zeroed buffer are never touched.
        let n = self.n;
        for k in 0..n {
            for x in &mut sum[k * n..=k * n + k] {
                *x = *x * scale;
            }
        }
        Ok(sum)
    }
}

/// Records the defects of one row of layer `layer`, head `head` into `found` (lowest
/// `(head, row, col)` of the layer wins, whatever order the rows were visited in).
#[cold]
fn scan<F: FlowFloat>(found: &mut Defects, layer: usize, head: usize, row: usize, values: &[F]) {
    let at = |col| Position {
        layer: Some(layer),
        head: Some(head),
        row,
        col,
    };
    let row_defects = Defects {
        non_finite: values.iter().position(|x| !x.is_finite()).map(at),
        negative: values
            .iter()
            .position(|&x| x < F::zero())
            .map(|col| (at(col), values[col].widen())),
    };
    found.merge(row_defects, layer);
}

/// Checks the shape of `[layers][heads][N][N]` attention (check 1 of [method §13](docs/method.md#s13)) and returns
/// the number of values per layer. Shared by every aggregation entry point, CPU and GPU.
///
/// # Errors
///
/// [`Error::ShapeMismatch`] (length), then [`Error::EmptySequence`], then
/// [`Error::ZeroDimension`] (layers, then heads).
///
/// # Complexity
///
/// O(1).
pub fn check_shape(
    len: usize,
    layers: usize,
    heads: usize,
    n: usize,
    layout: Layout,
) -> Result<usize, Error> {
    let per_layer = layout.matrix_len(n).saturating_mul(heads);
    let expected = per_layer.saturating_mul(layers);
    if len != expected {
        return Err(Error::ShapeMismatch {
            what: "attention",
            expected,
            actual: len,
        });
    }
    if n == 0 {
        return Err(Error::EmptySequence);
    }
    if layers == 0 {
        return Err(Error::ZeroDimension { what: "layers" });
    }
    if heads == 0 {
        return Err(Error::ZeroDimension { what: "heads" });
    }
    Ok(per_layer)
}

/// Aggregates `[layers][heads][N][N]` attention into `Ā` over the selected layers.
///
/// # Errors
///
/// In the order of [method §13](docs/method.md#s13): [`Error::ShapeMismatch`] (length), [`Error::EmptySequence`],
/// [`Error::ZeroDimension`] (layers, then heads), [`Error::InvalidLayerSelection`], then the
/// first [`Error::NonFinite`] and the first [`Error::Negative`] entry (lowest flat index,
/// lower triangles of the selected layers only).
///
/// # Complexity
///
/// O(L_sel · H · N²) time, one streaming read of the selected layers; O(N²) memory for
/// the output only.
///
/// # Examples
///
/// ```
/// use flowtracer_core::aggregate::{aggregate, Layout, LayerSelection};
/// // One layer, two heads, N = 2.
/// let p = [1.0, 0.0, 0.25, 0.75, /* head 1 */ 1.0, 0.0, 0.5, 0.5];
/// let a = aggregate(&p, 1, 2, 2, Layout::Dense, &LayerSelection::All)?;
/// assert_eq!(a, vec![1.0, 0.0, 0.375, 0.625]);
/// # Ok::<(), flowtracer_core::Error>(())
/// ```
pub fn aggregate<F: FlowFloat>(
    attention: &[F],
    layers: usize,
    heads: usize,
    n: usize,
    layout: Layout,
    selection: &LayerSelection,
) -> Result<Vec<F>, Error> {
    let per_layer = check_shape(attention.len(), layers, heads, n, layout)?;
    let mut selected = select_layers(layers, selection)?;
    // Stream in memory order; the mean does not depend on the order of the layers.
    selected.sort_unstable();
    let mut acc = LayerAccumulator::new(heads, n, layout)?;
    for l in selected {
        acc.add_layer(l, &attention[l * per_layer..(l + 1) * per_layer])?;
    }
    acc.finish()
}
