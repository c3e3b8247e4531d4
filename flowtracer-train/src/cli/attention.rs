//! Reading an attention file for `flowtracer score` and `explain`: a `.npy` array
//! (`[N, N]`, `[H, N, N]` or `[L, H, N, N]`), one safetensors tensor, or per-layer
//! safetensors tensors ordered by the number in their names, checked for shape before any
//! data is decoded, then averaged over the selected layers and every head while it is
//! decoded (the file, `Ā` and one head matrix in memory).

use std::path::{Path, PathBuf};

use flowtracer_core::aggregate::{
    LayerAccumulator, LayerSelection, Layout, aggregate, select_layers,
};
use flowtracer_io::{RawArray, SafeTensors, view_npy};

use super::CliError;
use crate::atomic::read_regular;

/// An attention file, opened and checked for shape, before its data is aggregated.
pub(super) struct AttentionFile {
    /// Tokens.
    pub(super) n: usize,
    /// Heads.
    heads: usize,
    /// Layers, if the input has a layer axis.
    pub(super) layers: Option<usize>,
    /// The shape as found (for messages).
    pub(super) shape: Vec<usize>,
    /// Where the data comes from.
    source: Source,
    /// The file, for messages.
    path: PathBuf,
}

enum Source {
    /// A `.npy` file's bytes: one array, decoded as it is averaged.
    Npy(Vec<u8>),
    /// A safetensors file's bytes and the one tensor to read, decoded as it is averaged.
    Tensor { bytes: Vec<u8>, name: String },
    /// Per-layer safetensors: the file's bytes and the tensor names in layer order.
    PerLayer { bytes: Vec<u8>, names: Vec<String> },
}

impl AttentionFile {
    pub(super) fn open(path: &Path, tensors: &[String]) -> Result<Self, CliError> {
        let shown = path.display();
        // A regular file, read up to the size it has (a device, FIFO or directory is refused).
        let bytes = read_regular(path, u64::MAX)
            .map_err(|e| CliError::bad_input(format!("cannot read --attention {shown}: {e}")))?;
        let io = |e: flowtracer_io::Error| CliError::bad_input(format!("{shown}: {e}"));
        let is_npy = bytes.starts_with(b"\x93NUMPY")
            || path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("npy"));
        if is_npy {
            if !tensors.is_empty() {
                return Err(CliError::bad_input(format!(
                    "--tensor applies to .safetensors files, but {shown} is a .npy file"
                )));
            }
            let shape = view_npy(&bytes).map_err(io)?.shape;
            return Self::from_shape(path, shape, Source::Npy(bytes));
        }
        let file = SafeTensors::parse(&bytes).map_err(io)?;
        let infos = file.tensors();
        let names: Vec<String> = match tensors {
            [] if infos.is_empty() => {
                return Err(CliError::bad_input(format!(
                    "{shown}: the file holds no tensors"
                )));
            }
            [] if infos.len() == 1 => vec![infos[0].name.clone()],
            [] => layer_order(infos.iter().map(|t| t.name.as_str()))
                .map_err(|e| CliError::bad_input(format!("{shown}: {e}")))?,
            names => names.to_vec(),
        };
        if names.len() == 1 {
            let shape = file.view(&names[0]).map_err(io)?.shape;
            drop(file);
            let name = names.into_iter().next().expect("one name");
            return Self::from_shape(path, shape, Source::Tensor { bytes, name });
        }
        // Per-layer tensors: check every shape (and dtype) before reading any data.
        let mut layer_shape: Option<(usize, usize, Vec<usize>)> = None;
        for name in &names {
            work(1);
            let info = file
                .get(name)
                .ok_or_else(|| io(flowtracer_io::Error::TensorNotFound { name: name.clone() }))?;
            if !matches!(info.dtype.as_str(), "F64" | "F32" | "F16" | "BF16") {
                return Err(io(flowtracer_io::Error::UnsupportedDtype {
                    dtype: info.dtype.clone(),
                }));
            }
            let (heads, n) = match info.shape.as_slice() {
                &[a, b] if a == b => (1, a),
                &[h, a, b] | &[1, h, a, b] if a == b => (h, a),
                s => {
                    return Err(CliError::bad_input(format!(
                        "{shown}: per-layer tensor {name:?} has shape {s:?}; expected [N,N], [H,N,N] or [1,H,N,N] with square matrices"
                    )));
                }
            };
            match &layer_shape {
                None => layer_shape = Some((heads, n, info.shape.clone())),
                Some((h0, n0, s0)) if (*h0, *n0) != (heads, n) => {
                    return Err(CliError::bad_input(format!(
                        "{shown}: per-layer tensor {name:?} has shape {:?}, but the first one has {s0:?}",
                        info.shape
                    )));
                }
                Some(_) => {}
            }
        }
        let (heads, n, first) = layer_shape.unwrap_or((1, 0, Vec::new()));
        let mut shape = vec![names.len()];
        shape.extend_from_slice(&first);
        drop(file);
        check_n(path, n, &shape)?;
        Ok(Self {
            n,
            heads,
            layers: Some(names.len()),
            shape,
            source: Source::PerLayer { bytes, names },
            path: path.to_path_buf(),
        })
    }

    fn from_shape(path: &Path, shape: Vec<usize>, source: Source) -> Result<Self, CliError> {
        let (layers, heads, n) = match *shape.as_slice() {
            [a, b] => (None, 1, (a, b)),
            [h, a, b] => (None, h, (a, b)),
            [l, h, a, b] => (Some(l), h, (a, b)),
            _ => {
                return Err(CliError::bad_input(format!(
                    "{}: attention has shape {shape:?} (rank {}); expected [N,N], [H,N,N] or [L,H,N,N]",
                    path.display(),
                    shape.len()
                )));
            }
        };
        if n.0 != n.1 {
            return Err(CliError::bad_input(format!(
                "{}: attention matrices must be square, but the shape is {shape:?}",
                path.display()
            )));
        }
        check_n(path, n.0, &shape)?;
        if heads == 0 || layers == Some(0) {
            return Err(CliError::bad_input(format!(
                "{}: attention has shape {shape:?}, with no {}",
                path.display(),
                if heads == 0 { "heads" } else { "layers" }
            )));
        }
        Ok(Self {
            n: n.0,
            heads,
            layers,
            shape,
            source,
            path: path.to_path_buf(),
        })
    }

    /// Averages the selected layers and all heads into `Ā`, decoding one head's `N x N`
    /// matrix at a time: besides the file's bytes, only `Ā` and one head's matrix (both
    /// f64) are held.
    ///
    /// Each head is added to the core's [`LayerAccumulator`] as it is decoded, in the order
    /// the core's [`aggregate`] adds them (selected layers ascending, heads ascending), so
    /// `Ā` is the same to the last bit. A defect (NaN, infinity, negative entry) is then
    /// reported as the core reports it for whole layers: the layer holding the first one is
    /// decoded whole and checked by the core alone.
    pub(super) fn aggregate(
        self,
        selection: &LayerSelection,
    ) -> Result<(Vec<f64>, Option<Vec<usize>>), CliError> {
        let core = |e: flowtracer_core::Error| CliError::bad_input(e.to_string());
        let shown = self.path.display().to_string();
        let io = |e: flowtracer_io::Error| CliError::bad_input(format!("{shown}: {e}"));
        let (n, heads) = (self.n, self.heads);
        // 0: no layer axis and one head, the input is already `Ā`.
        let layers = match self.layers {
            Some(l) => l,
            None if heads == 1 => 0,
            None => 1,
        };
        let selected = match self.layers {
            Some(l) => Some(select_layers(l, selection).map_err(core)?),
            None => None,
        };
        let mut order = selected.clone().unwrap_or_else(|| vec![0]);
        order.sort_unstable();
        match &self.source {
            Source::Npy(bytes) => {
                let view = view_npy(bytes).map_err(io)?;
                let abar = average(&[view], true, layers, heads, n, &order).map_err(core)?;
                Ok((abar, selected))
            }
            Source::Tensor { bytes, name } => {
                let file = SafeTensors::parse(bytes).map_err(io)?;
                let view = file.view(name).map_err(io)?;
                let abar = average(&[view], true, layers, heads, n, &order).map_err(core)?;
                Ok((abar, selected))
            }
            Source::PerLayer { bytes, names } => {
                let file = SafeTensors::parse(bytes).map_err(io)?;
                let views = names
                    .iter()
                    .map(|name| file.view(name))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(io)?;
                let abar = average(&views, false, layers, heads, n, &order).map_err(core)?;
                Ok((abar, selected))
            }
        }
    }
}

/// The mean over the layers `order` (ascending) and all heads of attention held either in
/// one view of `[layers][heads][n][n]` elements (`one_array`) or in one view per layer of
/// `[heads][n][n]`: see [`AttentionFile::aggregate`]. `layers == 0` with one head means the
/// input is already `Ā` (no layer axis).
fn average(
    views: &[RawArray<'_>],
    one_array: bool,
    layers: usize,
    heads: usize,
    n: usize,
    order: &[usize],
) -> Result<Vec<f64>, flowtracer_core::Error> {
    let m = n * n;
    let per_layer = heads * m;
    // A layer's view and the offset of its first element.
    let layer = |l: usize| -> (&RawArray<'_>, usize) {
        if one_array {
            (&views[0], l * per_layer)
        } else {
            (&views[l], 0)
        }
    };
    if views.iter().any(|v| !v.is_c_order()) {
        // A Fortran-order .npy: decoded whole and averaged by the core.
        let data = views[0].decode().data.into_f64();
        if layers == 0 {
            return Ok(data);
        }
        let all = LayerSelection::List(order.to_vec());
        return aggregate(&data, layers, heads, n, Layout::Dense, &all);
    }
    if layers == 0 {
        // Already `Ā` (`[N, N]` or `[1, N, N]`, no layer axis): only decoded, and checked by
        // the core's trace.
        let mut abar = vec![0.0; m];
        views[0].decode_f64_into(0, &mut abar);
        return Ok(abar);
    }
    let mut acc = LayerAccumulator::new(1, n, Layout::Dense)?;
    let mut head = vec![0.0; m];
    for &l in order {
        let (view, start) = layer(l);
        for h in 0..heads {
            view.decode_f64_into(start + h * m, &mut head);
            acc.add_layer(l, &head)?;
        }
    }
    match acc.finish() {
        Err(
            flowtracer_core::Error::NonFinite { position }
            | flowtracer_core::Error::Negative { position, .. },
        ) => {
            // Report the defect as the core does for whole layers: check that layer alone.
            let l = position.layer.unwrap_or(0);
            let (view, start) = layer(l);
            let mut data = vec![0.0; per_layer];
            view.decode_f64_into(start, &mut data);
            let mut one = LayerAccumulator::new(heads, n, Layout::Dense)?;
            one.add_layer(l, &data)?;
            one.finish()
        }
        other => other,
    }
}

fn check_n(path: &Path, n: usize, shape: &[usize]) -> Result<(), CliError> {
    if n == 0 {
        return Err(CliError::bad_input(format!(
            "{}: attention has shape {shape:?}, with no tokens",
            path.display()
        )));
    }
    Ok(())
}

/// Orders per-layer tensor names by the last number in each name.
///
/// One sort of `(layer, position, name)`: O(T log T) for T names. Two names with one layer
/// number are reported as the pair whose later name comes first in the file; a name without
/// a number as the first such name, if no repeated layer number comes before it.
fn layer_order<'a>(names: impl Iterator<Item = &'a str>) -> Result<Vec<String>, String> {
    let mut keyed = Vec::new();
    let mut unnumbered = None;
    for (at, name) in names.enumerate() {
        let digits = name
            .rsplit(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())
            .unwrap_or("");
        match digits.parse::<u64>() {
            Ok(layer) => keyed.push((layer, at, name)),
            Err(_) => {
                unnumbered = Some(name);
                break;
            }
        }
    }
    keyed.sort_unstable_by(|a, b| {
        work(1);
        a.cmp(b)
    });
    if let Some(w) = keyed
        .windows(2)
        .filter(|w| w[0].0 == w[1].0)
        .min_by_key(|w| w[1].1)
    {
        let ((layer, _, other), (_, _, name)) = (w[0], w[1]);
        return Err(format!(
            "tensors {other:?} and {name:?} have the same layer number {layer}; list the per-layer tensors with repeated --tensor"
        ));
    }
    if let Some(name) = unnumbered {
        return Err(format!(
            "the file holds several tensors and {name:?} has no layer number; choose one with --tensor, or list the per-layer tensors with repeated --tensor"
        ));
    }
    Ok(keyed
        .into_iter()
        .map(|(_, _, name)| name.to_owned())
        .collect())
}

/// Work counted by the tests: each name comparison of the per-layer checks.
#[cfg(test)]
static WORK: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Counts `n` units of work (tests only; nothing in other builds).
#[inline]
fn work(n: u64) {
    #[cfg(test)]
    WORK.fetch_add(n, core::sync::atomic::Ordering::Relaxed);
    #[cfg(not(test))]
    let _ = n;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file of `t` zero-size per-layer tensors, listed in a scrambled layer
    /// order (`k * 7919 mod t`; 7919 is prime, so every layer appears once).
    fn per_layer_file(t: usize) -> PathBuf {
        let mut header = String::from("{");
        for k in 0..t {
            let i = k * 7919 % t;
            if k > 0 {
                header.push(',');
            }
            header.push_str(&format!(
                "\"model.layers.{i}.attn\":{{\"dtype\":\"F32\",\"shape\":[0,0],\"data_offsets\":[0,0]}}"
            ));
        }
        header.push('}');
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        let path = std::env::temp_dir().join(format!(
            "flowtracer-score-layers-{t}-{}.safetensors",
            std::process::id()
        ));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Issue 14 item 5: ordering and checking T per-layer tensors costs O(T log T) name
    /// comparisons, not O(T^2). Counted, not timed (each comparison of the layer sort, each
    /// lookup by name; a lookup is flowtracer-io's binary search, counted in its own test):
    /// 4x the tensors must cost well under 16x the work (T log T gives about 4.7x).
    #[test]
    fn per_layer_checks_are_not_quadratic() {
        let mut counts = Vec::new();
        for t in [4_000, 16_000] {
            let path = per_layer_file(t);
            WORK.store(0, core::sync::atomic::Ordering::Relaxed);
            let err = AttentionFile::open(&path, &[]).err().expect("zero tokens");
            assert!(err.message().contains("no tokens"), "{err}");
            counts.push(WORK.load(core::sync::atomic::Ordering::Relaxed));
            let _ = std::fs::remove_file(&path);
        }
        println!(
            "name comparisons: T = 4000: {}, 4T = 16000: {}",
            counts[0], counts[1]
        );
        assert!(
            counts[1] < 6 * counts[0],
            "4x the tensors cost {}x the work ({counts:?})",
            counts[1] as f64 / counts[0] as f64
        );
    }

    /// The layer order and both error messages, on small cases.
    #[test]
    fn layer_order_sorts_by_the_last_number_and_reports_the_first_problem() {
        let order = layer_order(["b.10.x", "a.2", "c.0.y", "d7"].into_iter()).unwrap();
        assert_eq!(order, ["c.0.y", "a.2", "d7", "b.10.x"]);
        let err = layer_order(["l.1", "m.2", "n.1", "o.2"].into_iter()).unwrap_err();
        assert!(
            err.contains("\"l.1\" and \"n.1\" have the same layer number 1"),
            "{err}"
        );
        let err = layer_order(["l.1", "x", "l.1"].into_iter()).unwrap_err();
        assert!(err.contains("\"x\" has no layer number"), "{err}");
    }

    /// The `.npy` bytes of `values` (f64, C order) with `shape`.
    fn npy(shape: &[usize], values: &[f64]) -> Vec<u8> {
        let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
        let mut header = format!(
            "{{'descr': '<f8', 'fortran_order': False, 'shape': ({}), }}",
            dims.join(", ")
        );
        while !(10 + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&u16::try_from(header.len()).unwrap().to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        out
    }

    /// Averaging head by head while decoding gives the core's `aggregate` exactly: the same
    /// `Ā` to the last bit, and the same first defect (layer, head, row, column) when several
    /// are planted across heads, rows and layers.
    #[test]
    fn streaming_average_equals_the_core_aggregate() {
        let (l, h, n) = (4, 3, 6);
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut clean = vec![0.0; l * h * n * n];
        for m in 0..l * h {
            for k in 0..n {
                let row: Vec<f64> = (0..=k).map(|_| next()).collect();
                let total: f64 = row.iter().sum();
                for (i, x) in row.iter().enumerate() {
                    clean[(m * n + k) * n + i] = x / total;
                }
            }
        }
        let at = |layer: usize, head: usize, row: usize, col: usize| {
            ((layer * h + head) * n + row) * n + col
        };
        let mut cases = vec![clean.clone()];
        // A negative in an early head's late row and one in a later head's early row.
        let mut two_negatives = clean.clone();
        two_negatives[at(1, 0, 5, 2)] = -0.25;
        two_negatives[at(1, 2, 1, 0)] = -0.5;
        cases.push(two_negatives.clone());
        // A NaN in a later layer beats the negatives of an earlier one.
        let mut nan_later = two_negatives;
        nan_later[at(3, 1, 4, 4)] = f64::NAN;
        nan_later[at(3, 0, 5, 1)] = f64::INFINITY;
        cases.push(nan_later);
        for values in &cases {
            let bytes = npy(&[l, h, n, n], values);
            let view = view_npy(&bytes).unwrap();
            for selection in [
                LayerSelection::All,
                LayerSelection::Middle,
                LayerSelection::List(vec![3, 1]),
            ] {
                let mut order = select_layers(l, &selection).unwrap();
                order.sort_unstable();
                let streamed = average(core::slice::from_ref(&view), true, l, h, n, &order);
                let whole = aggregate(values, l, h, n, Layout::Dense, &selection);
                match (&streamed, &whole) {
                    (Ok(a), Ok(b)) => {
                        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
                    }
                    _ => assert_eq!(streamed, whole, "{selection:?}"),
                }
            }
        }
    }
}
