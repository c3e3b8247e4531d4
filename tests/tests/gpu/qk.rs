//! The GPU Q/K kernels (`flowtracer_gpu::qk`) against the core's Q/K stage
//! (`flowtracer_core::qk`, f32 arithmetic) and its naive f64 oracle
//! (`reference::attention_from_qk_capped`), on the same f32 values (feature `gpu`).
//!
//! Tolerance: [`flowtracer_gpu::TOLERANCE`] (`|x - reference| <= 1e-5 + 1e-4 * |reference|`,
//! stated once in flowtracer-gpu) for `Ā` against the oracle, for both the GPU and the core's
//! f32 path, and for `h` and `f` of tracing the GPU's `Ā` on the GPU against the core's
//! trace of the oracle's `Ā`. Errors must be the core's, variant and position.
//!
//! A module of `tests/gpu.rs` (built only with the `gpu` feature): the device comes from its
//! `device()`, so without an adapter these tests fail (unless `FLOWTRACER_ALLOW_NO_GPU=1`).

use flowtracer_core::qk::{QkAccumulator, QkConfig, QkLayer, QkShape, sequence_from_qk};
use flowtracer_core::{Error, Sequence, Spans, TraceConfig, reference, trace};
use flowtracer_gpu::cubecl::client::Client;

use super::device;
use flowtracer_gpu::{
    DeviceBuffer, GpuOptions, Kernel, QkAccumulator as GpuAccumulator, QkDeviceLayer, QkSequence,
    TOLERANCE, TraceInput, attention_from_qk, trace_batch,
};

/// `len` values in `[-2, 2]` from a fixed integer hash of `(seed, index)`.
pub(crate) fn values(seed: u64, len: usize) -> Vec<f32> {
    (0..len as u64)
        .map(|i| {
            let mut x = (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i).wrapping_add(0x632b_e5ab);
            x = (x ^ (x >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
            x ^= x >> 29;
            ((x % 4001) as f32 / 1000.0) - 2.0
        })
        .collect()
}

/// One Q/K problem, values from [`values`].
#[derive(Debug, Clone)]
pub(crate) struct Case {
    pub(crate) layers: usize,
    pub(crate) q_heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) n: usize,
    pub(crate) d: usize,
    pub(crate) window: Option<usize>,
    /// Left padding: keys `0..pad` are invalid.
    pub(crate) pad: Option<usize>,
    pub(crate) with_lse: bool,
    pub(crate) scale: Option<f64>,
    pub(crate) softcap: Option<f64>,
    /// `QkConfig::row_tolerance` (`None`: the default).
    pub(crate) row_tolerance: Option<f64>,
    pub(crate) seed: u64,
}

impl Case {
    pub(crate) fn new(q_heads: usize, kv_heads: usize, n: usize, d: usize) -> Self {
        Self {
            layers: 2,
            q_heads,
            kv_heads,
            n,
            d,
            window: None,
            pad: None,
            with_lse: false,
            scale: None,
            softcap: None,
            row_tolerance: None,
            seed: (q_heads * 1000 + kv_heads * 100 + n * 7 + d) as u64,
        }
    }

    pub(crate) fn shape(&self) -> QkShape {
        QkShape::new(self.q_heads, self.kv_heads, self.n, self.d)
    }

    pub(crate) fn config(&self) -> QkConfig {
        let mut c = QkConfig::default();
        if let Some(w) = self.window {
            c = c.with_window(w);
        }
        if let Some(s) = self.scale {
            c = c.with_scale(s);
        }
        if let Some(cap) = self.softcap {
            c = c.with_logit_softcap(cap);
        }
        if let Some(t) = self.row_tolerance {
            c = c.with_row_tolerance(t);
        }
        c
    }

    pub(crate) fn scale_value(&self) -> f64 {
        self.config().scale_for(self.d)
    }

    pub(crate) fn mask(&self) -> Option<Vec<bool>> {
        self.pad.map(|p| (0..self.n).map(|i| i >= p).collect())
    }

    pub(crate) fn q(&self) -> Vec<f32> {
        values(self.seed, self.layers * self.shape().q_len())
    }

    pub(crate) fn k(&self) -> Vec<f32> {
        values(self.seed + 1, self.layers * self.shape().k_len())
    }

    /// The f64 log-sum-exp of every (layer, head, row) over its visible keys, rounded to
    /// f32 (0 for a row that sees no key).
    pub(crate) fn lse(&self, q: &[f32], k: &[f32]) -> Vec<f32> {
        let (n, d) = (self.n, self.d);
        let group = self.q_heads / self.kv_heads;
        let mask = self.mask();
        let mut out = vec![0.0f32; self.layers * self.q_heads * n];
        for l in 0..self.layers {
            for h in 0..self.q_heads {
                for row in 0..n {
                    let s: Vec<f64> = (0..=row)
                        .filter(|&i| self.window.is_none_or(|w| row - i < w))
                        .filter(|&i| mask.as_ref().is_none_or(|m| m[i]))
                        .map(|i| {
                            let qr = &q[((l * self.q_heads + h) * n + row) * d..][..d];
                            let kr = &k[((l * self.kv_heads + h / group) * n + i) * d..][..d];
                            let s = qr
                                .iter()
                                .zip(kr)
                                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                                .sum::<f64>()
                                * self.scale_value();
                            self.softcap.map_or(s, |cap| cap * (s / cap).tanh())
                        })
                        .collect();
                    if s.is_empty() {
                        continue;
                    }
                    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let z = m + s.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
                    out[(l * self.q_heads + h) * n + row] = z as f32;
                }
            }
        }
        out
    }

    /// Question: the first valid token; answer: the last (`None` when they coincide: then
    /// the accumulators, which take no spans, are compared).
    pub(crate) fn spans(&self) -> Option<Spans> {
        let first = self.pad.unwrap_or(0).min(self.n - 1);
        (first + 1 < self.n).then(|| Spans::new(first..first + 1, self.n - 1..self.n))
    }

    /// The oracle's `Ā` on these values.
    pub(crate) fn oracle(&self, q: &[f32], k: &[f32], lse: Option<&[f32]>) -> Vec<f64> {
        let wide = |x: &[f32]| x.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
        let lse = lse.map(wide);
        reference::attention_from_qk_capped(
            &wide(q),
            &wide(k),
            lse.as_deref(),
            (self.layers, self.q_heads, self.kv_heads),
            self.n,
            self.d,
            (self.scale_value(), self.softcap),
            self.window,
            self.mask().as_deref(),
        )
    }

    /// The core's f32 path on these values (`Ā` in f64 storage, or its error).
    pub(crate) fn core(
        &self,
        q: &[f32],
        k: &[f32],
        lse: Option<&[f32]>,
    ) -> Result<Vec<f64>, Error> {
        let s = self.shape();
        let layers: Vec<QkLayer<'_, f32>> = (0..self.layers)
            .map(|l| {
                let layer = QkLayer::new(
                    l,
                    &q[l * s.q_len()..][..s.q_len()],
                    &k[l * s.k_len()..][..s.k_len()],
                );
                match lse {
                    Some(z) => layer.with_lse(&z[l * s.lse_len()..][..s.lse_len()]),
                    None => layer,
                }
            })
            .collect();
        let mask = self.mask();
        let Some(spans) = self.spans() else {
            let mut acc = QkAccumulator::<f64>::new(s, self.config(), mask.as_deref())?;
            for layer in &layers {
                acc.add_layer(layer)?;
            }
            return acc.finish_matrix();
        };
        let seq: Sequence<'static, f64> =
            sequence_from_qk(&layers, s, &self.config(), mask.as_deref(), spans)?;
        Ok(seq.attention().to_vec())
    }

    /// The GPU's `Ā` on these values (or its error), one layer buffer per layer.
    pub(crate) fn gpu(
        &self,
        client: &Client,
        q: &[f32],
        k: &[f32],
        lse: Option<&[f32]>,
    ) -> Result<Vec<f32>, Error> {
        let s = self.shape();
        let bufs: Vec<(DeviceBuffer, DeviceBuffer, Option<DeviceBuffer>)> = (0..self.layers)
            .map(|l| {
                (
                    DeviceBuffer::from_f32(client, &q[l * s.q_len()..][..s.q_len()]),
                    DeviceBuffer::from_f32(client, &k[l * s.k_len()..][..s.k_len()]),
                    lse.map(|z| {
                        DeviceBuffer::from_f32(client, &z[l * s.lse_len()..][..s.lse_len()])
                    }),
                )
            })
            .collect();
        let layers: Vec<QkDeviceLayer<'_>> = bufs
            .iter()
            .enumerate()
            .map(|(index, (q, k, z))| QkDeviceLayer {
                index,
                q,
                k,
                lse: z.as_ref(),
            })
            .collect();
        let mask = self.mask();
        let Some(spans) = self.spans() else {
            let mut seq = QkSequence::ragged(s.q_heads, s.kv_heads, s.d, &[s.n]);
            seq[0].key_valid = mask;
            let shape = (s.q_heads, s.kv_heads, s.d);
            let options = GpuOptions::default();
            let mut acc = GpuAccumulator::new(client, shape, &self.config(), seq, &options)?;
            for layer in &layers {
                acc.add_layer(client, layer)?;
            }
            let mut out = acc.finish(client)?;
            out.results.pop().unwrap()?;
            return Ok(out.attention.read_f32(client));
        };
        let a = attention_from_qk(
            client,
            &layers,
            s,
            &self.config(),
            mask.as_deref(),
            &spans,
            &GpuOptions::default(),
        )?;
        Ok(a.read_f32(client))
    }
}

#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            TOLERANCE.close(f64::from(g), w),
            "{what}[{i}]: {g} vs oracle {w} (tolerance {:?})",
            TOLERANCE
        );
    }
}

/// Runs a case on the GPU, the core and the oracle, and compares `Ā`, then `h` and `f` of
/// tracing the GPU's `Ā` on the GPU with the core's trace of the oracle's `Ā`.
fn check(client: &Client, c: &Case) {
    let (q, k) = (c.q(), c.k());
    let lse = c.with_lse.then(|| c.lse(&q, &k));
    let want = c.oracle(&q, &k, lse.as_deref());
    let core = c.core(&q, &k, lse.as_deref()).unwrap();
    let core32: Vec<f32> = core.iter().map(|&x| x as f32).collect();
    assert_close(&format!("{c:?} core f32 Ā"), &core32, &want);
    let got = c.gpu(client, &q, &k, lse.as_deref()).unwrap();
    assert_close(&format!("{c:?} gpu Ā"), &got, &want);
    // Then the reach and flow kernels on that Ā.
    let Some(spans) = c.spans() else { return };
    let reference = trace(&Sequence::dense(&want, spans).unwrap());
    let buf = DeviceBuffer::from_f32(client, &got);
    let question = c.pad.unwrap_or(0);
    let input = TraceInput::dense(c.n, question..question + 1, c.n - 1..c.n);
    let t = trace_batch(
        client,
        &buf,
        &[input],
        &TraceConfig::default(),
        &GpuOptions::default(),
    )
    .unwrap();
    match (reference, t.read(client, 0)) {
        (Ok(r), Ok(g)) => {
            assert_close(&format!("{c:?} h"), &g.reach, r.reach());
            assert_close(&format!("{c:?} f"), &g.flow, r.flow());
        }
        (Err(e), Err(g)) => assert_eq!(e, g, "{c:?}: trace errors differ"),
        (r, g) => panic!("{c:?}: core trace {:?}, gpu trace {:?}", r.err(), g.err()),
    }
}

#[test]
fn gqa_mqa_and_mha_equal_the_oracle() {
    let Some(client) = device() else { return };
    for (hq, hkv) in [(4, 2), (8, 2), (3, 1), (4, 1), (2, 2)] {
        check(&client, &Case::new(hq, hkv, 21, 8));
    }
}

#[test]
fn odd_n_n_off_the_tile_and_d_off_the_chunk() {
    let Some(client) = device() else { return };
    // Tiles of 64 rows and keys, features in chunks of 16: N from 1 to 200 (up to four tiles,
    // the last partial), d across one to three chunks.
    for (n, d) in [
        (1, 3),
        (15, 16),
        (16, 17),
        (17, 5),
        (33, 40),
        (47, 20),
        (64, 4),
        (65, 9),
        (130, 24),
        (200, 6),
    ] {
        check(&client, &Case::new(4, 2, n, d));
    }
}

#[test]
fn lse_given_equals_lse_computed() {
    let Some(client) = device() else { return };
    for n in [9, 38] {
        let mut c = Case::new(4, 2, n, 12);
        let without = {
            let (q, k) = (c.q(), c.k());
            c.gpu(&client, &q, &k, None).unwrap()
        };
        c.with_lse = true;
        check(&client, &c);
        let (q, k) = (c.q(), c.k());
        let lse = c.lse(&q, &k);
        let with = c.gpu(&client, &q, &k, Some(&lse)).unwrap();
        let wide: Vec<f64> = without.iter().map(|&x| f64::from(x)).collect();
        assert_close("LSE given vs computed", &with, &wide);
    }
}

#[test]
fn padding_window_softcap_and_scale() {
    let Some(client) = device() else { return };
    let mut cases = Vec::new();
    for pad in [0, 1, 5, 20] {
        cases.push(Case {
            pad: Some(pad),
            ..Case::new(4, 2, 35, 8)
        });
        cases.push(Case {
            pad: Some(pad),
            with_lse: true,
            ..Case::new(2, 1, 19, 6)
        });
    }
    for w in [1, 2, 7, 16, 17, 40] {
        cases.push(Case {
            window: Some(w),
            ..Case::new(4, 2, 37, 9)
        });
    }
    // Windows across 64-key tiles: whole tiles skipped left of the band.
    for w in [3, 63, 64, 65, 100] {
        cases.push(Case {
            window: Some(w),
            ..Case::new(2, 1, 190, 5)
        });
    }
    cases.push(Case {
        window: Some(5),
        pad: Some(3),
        with_lse: true,
        ..Case::new(6, 3, 29, 10)
    });
    cases.push(Case {
        softcap: Some(3.0),
        scale: Some(1.7),
        ..Case::new(4, 4, 26, 16)
    });
    cases.push(Case {
        softcap: Some(1.5),
        with_lse: true,
        ..Case::new(2, 1, 18, 4)
    });
    cases.push(Case {
        layers: 1,
        ..Case::new(32, 8, 20, 128)
    });
    for c in &cases {
        check(&client, c);
    }
}

/// A ragged batch in FlashAttention's varlen layout, read in place, equals each sequence
/// alone through the core; the padded layout too; one launch sequence for the batch.
#[test]
fn ragged_and_padded_batches_equal_each_sequence_alone() {
    let Some(client) = device() else { return };
    let (hq, hkv, d) = (4usize, 2usize, 8usize);
    let lengths = [5usize, 17, 1, 33];
    let cu: Vec<usize> = core::iter::once(0)
        .chain(lengths.iter().scan(0, |t, &n| {
            *t += n;
            Some(*t)
        }))
        .collect();
    let total = cu[lengths.len()];
    let cases: Vec<Case> = lengths
        .iter()
        .map(|&n| Case {
            layers: 1,
            ..Case::new(hq, hkv, n, d)
        })
        .collect();
    // Token-major [total][H][d] from each sequence's head-major [H][n][d].
    let mut q = vec![0.0f32; total * hq * d];
    let mut k = vec![0.0f32; total * hkv * d];
    for (b, c) in cases.iter().enumerate() {
        let (cq, ck) = (c.q(), c.k());
        for t in 0..c.n {
            for h in 0..hq {
                q[((cu[b] + t) * hq + h) * d..][..d].copy_from_slice(&cq[(h * c.n + t) * d..][..d]);
            }
            for h in 0..hkv {
                k[((cu[b] + t) * hkv + h) * d..][..d]
                    .copy_from_slice(&ck[(h * c.n + t) * d..][..d]);
            }
        }
    }
    let mut seqs = QkSequence::varlen(&cu, (hq, hkv, d), q.len(), k.len(), None).unwrap();
    // One sequence with a padding mask as well.
    seqs[3] = seqs[3]
        .clone()
        .with_key_valid((0..33).map(|i| i >= 4).collect());
    let (qb, kb) = (
        DeviceBuffer::from_f32(&client, &q),
        DeviceBuffer::from_f32(&client, &k),
    );
    let mut acc = GpuAccumulator::new(
        &client,
        (hq, hkv, d),
        &QkConfig::default(),
        seqs,
        &GpuOptions::default(),
    )
    .unwrap();
    acc.add_layer(
        &client,
        &QkDeviceLayer {
            index: 3,
            q: &qb,
            k: &kb,
            lse: None,
        },
    )
    .unwrap();
    let out = acc.finish(&client).unwrap();
    assert_eq!(out.plan.count(Kernel::QkMean), 1);
    assert_eq!(out.plan.count(Kernel::QkStats), 1);
    let a = out.attention.read_f32(&client);
    for (b, c) in cases.iter().enumerate() {
        out.results[b].clone().unwrap();
        let c = Case {
            pad: (b == 3).then_some(4),
            ..c.clone()
        };
        let want = c.oracle(&c.q(), &c.k(), None);
        let n = c.n;
        assert_close(
            &format!("varlen seq {b}"),
            &a[out.offsets[b]..][..n * n],
            &want,
        );
    }
    // The varlen validation is the core's split_ragged.
    assert_eq!(
        QkSequence::varlen(&[0, 3, 2], (hq, hkv, d), 0, 0, None).unwrap_err(),
        Error::BadOffsets { index: 2 }
    );
    assert!(matches!(
        QkSequence::varlen(&cu, (hq, hkv, d), q.len() - 1, k.len(), None),
        Err(Error::ShapeMismatch { .. })
    ));
    // Padded [B][H][T][d], sequences right-aligned (left padding cut off by `start`).
    let t_pad = 20;
    let ns = [20usize, 13, 7];
    let mut qp = vec![9.0f32; ns.len() * hq * t_pad * d];
    let mut kp = vec![-9.0f32; ns.len() * hkv * t_pad * d];
    let mut seqs = Vec::new();
    let cases: Vec<Case> = ns
        .iter()
        .map(|&n| Case {
            layers: 1,
            ..Case::new(hq, hkv, n, d)
        })
        .collect();
    for (b, c) in cases.iter().enumerate() {
        let start = t_pad - c.n;
        let (cq, ck) = (c.q(), c.k());
        for h in 0..hq {
            qp[((b * hq + h) * t_pad + start) * d..][..c.n * d]
                .copy_from_slice(&cq[h * c.n * d..][..c.n * d]);
        }
        for h in 0..hkv {
            kp[((b * hkv + h) * t_pad + start) * d..][..c.n * d]
                .copy_from_slice(&ck[h * c.n * d..][..c.n * d]);
        }
        seqs.push(QkSequence::padded(b, (hq, hkv, d), t_pad, start, c.n).unwrap());
    }
    let (qb, kb) = (
        DeviceBuffer::from_f32(&client, &qp),
        DeviceBuffer::from_f32(&client, &kp),
    );
    let mut acc = GpuAccumulator::new(
        &client,
        (hq, hkv, d),
        &QkConfig::default(),
        seqs,
        &GpuOptions::default(),
    )
    .unwrap();
    acc.add_layer(
        &client,
        &QkDeviceLayer {
            index: 0,
            q: &qb,
            k: &kb,
            lse: None,
        },
    )
    .unwrap();
    let out = acc.finish(&client).unwrap();
    let a = out.attention.read_f32(&client);
    for (b, c) in cases.iter().enumerate() {
        let want = c.oracle(&c.q(), &c.k(), None);
        assert_close(
            &format!("padded seq {b}"),
            &a[out.offsets[b]..][..c.n * c.n],
            &want,
        );
    }
}

/// `N = 4096`: `Ā` has `2^24` entries, more than `65535` cubes of 256 units, the most one
/// grid dimension may hold on wgpu (lavapipe and NVIDIA alike): the final scale must fold its
/// grid, not fail validation. `Q = K = 0` (one head, `d = 1`): row `r` of `Ā` is `1 / (r + 1)`
/// on keys `0..=r`, 0 above the diagonal.
#[test]
fn n_4096_fits_the_launch_limits() {
    let Some(client) = device() else { return };
    let n = 4096usize;
    let zeros = DeviceBuffer::from_f32(&client, &vec![0.0f32; n]);
    let seqs = QkSequence::ragged(1, 1, 1, &[n]);
    let options = GpuOptions::default();
    let mut acc =
        GpuAccumulator::new(&client, (1, 1, 1), &QkConfig::default(), seqs, &options).unwrap();
    let layer = QkDeviceLayer {
        index: 0,
        q: &zeros,
        k: &zeros,
        lse: None,
    };
    acc.add_layer(&client, &layer).unwrap();
    let out = acc.finish(&client).unwrap();
    out.results[0].clone().unwrap();
    let max = client.properties().hardware.max_cube_count;
    for l in &out.plan.launches {
        let (x, y, z) = l.cubes;
        assert!(
            x <= max.0 && y <= max.1 && z <= max.2,
            "{l:?} exceeds {max:?}"
        );
    }
    let a = out.attention.read_f32(&client);
    for row in (0..n).step_by(97).chain([n - 1]) {
        let want: Vec<f64> = (0..n)
            .map(|key| {
                if key <= row {
                    1.0 / (row + 1) as f64
                } else {
                    0.0
                }
            })
            .collect();
        assert_close(&format!("row {row}"), &a[row * n..][..n], &want);
    }
}
