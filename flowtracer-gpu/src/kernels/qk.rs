//! `Ā` from post-RoPE queries and keys ([method §15](docs/method.md#s15)), mode (a): the
//! head mean of every layer's causal softmax is formed tile by tile and added into `Ā`; no
//! per-head `N x N` buffer exists.
//!
//! Three kernels per layer, all on square tiles of [`TILE`] (64) query rows by `TILE` keys,
//! one cube of `16 x 16` units per tile: unit `(x, y)` owns the `4 x 4` logits of rows
//! `y + 16 i` and keys `x + 16 j`, in registers. `Q·Kᵀ` goes through shared memory: the
//! feature dimension `d` is walked in chunks of 16, each unit loading 4 values of the `Q`
//! chunk and 4 of the `K` chunk, then doing 16 multiply-adds per 8 shared reads (no plane
//! operations).
//!
//! - `qk_scan`: the first non-finite value of `Q`, `K` and the log-sum-exp of every
//!   sequence, flat order (head, row, column) of each tensor, as an `atomic min` of the flat
//!   index (a grid-stride loop, so any size fits the launch limits).
//! - `qk_stats`: one cube per (row tile, query head, sequence) walks the visible key tiles;
//!   each unit keeps, for each of its rows, the maximum `m` and `l = Σ exp(s − m)` over its
//!   keys (online rescaling); the 16 partial states of a row are then combined, and it
//!   writes the row's log-sum-exp `m + ln l` to a small `[H_q][N]` buffer. With a saved
//!   log-sum-exp it writes that one instead and checks the row's mass `l · exp(m − lse)`
//!   against the tolerance. A visible valid logit whose `q·k` is not finite marks the row
//!   (`LogitsOverflow`). Defects are `atomic min`s of `head * N + row`.
//! - `qk_mean`: one cube per (key tile, row tile, sequence) recomputes `s` for every query
//!   head in turn, sums `exp(s − lse[h][row])` over the heads in registers, and writes (first
//!   layer) or adds (later layers) its tile of `Ā` once. Entries outside the causal window,
//!   or on a padding key, get 0, so the output never depends on the buffer's old contents.
//!
//! The mean's final scale `1 / (layers · H_q)` is `aggregate_scale`.

use cubecl::prelude::*;

use crate::buffer::DeviceBuffer;
use crate::plan::Launch;

/// Units per cube side: cubes are `UNITS x UNITS` units.
pub(crate) const UNITS: usize = 16;
/// Rows (and keys) per unit: each unit computes a `REG x REG` block of logits in registers.
const REG: usize = 4;
/// Side of a tile: query rows and keys per cube (`UNITS · REG`).
pub(crate) const TILE: usize = UNITS * REG;
/// Features loaded into shared memory at a time.
const CHUNK: usize = 16;
/// Row stride of the shared `K` tile: `CHUNK + 1`, so the 16 keys a half-warp reads at one
/// feature fall in 16 different banks (with `CHUNK` they would share 2: an 8-way conflict).
/// The `Q` tile needs no padding: a half-warp reads one address (a broadcast).
const KS_STRIDE: usize = CHUNK + 1;
// `tile_dot` has unit `x` load feature `x` of a chunk.
const _: () = assert!(CHUNK == UNITS);

/// `u32` words per sequence record.
pub(crate) const WORDS: usize = 14;
/// Sequence length `n`.
pub(crate) const N: usize = 0;
/// Element offset of `Q[head 0][row 0][0]`.
pub(crate) const Q_OFFSET: usize = 1;
/// Elements between query heads.
pub(crate) const Q_HEAD: usize = 2;
/// Elements between query rows.
pub(crate) const Q_ROW: usize = 3;
/// Element offset of `K[head 0][row 0][0]`.
pub(crate) const K_OFFSET: usize = 4;
/// Elements between key heads.
pub(crate) const K_HEAD: usize = 5;
/// Elements between key rows.
pub(crate) const K_ROW: usize = 6;
/// Element offset of `LSE[head 0][row 0]`.
pub(crate) const L_OFFSET: usize = 7;
/// Elements between heads of the log-sum-exp.
pub(crate) const L_HEAD: usize = 8;
/// Offset of key 0's validity word in the mask buffer.
pub(crate) const MASK_OFFSET: usize = 9;
/// Whether the sequence has a key mask (1) or every key is valid (0).
pub(crate) const HAS_MASK: usize = 10;
/// Element offset of `Ā[0][0]` in the output (dense, row stride `n`).
pub(crate) const OUT_OFFSET: usize = 11;
/// Element offset of `[head 0][row 0]` in the per-row buffers (`H_q · n` per sequence).
pub(crate) const ROWS_OFFSET: usize = 12;
/// Whether the sequence passed host validation (1) and is computed.
pub(crate) const ACTIVE: usize = 13;

/// Status slots per sequence: first non-finite flat index of `Q`, `K`, LSE; first
/// overflowing row and first row of wrong mass (`head * n + row`).
pub(crate) const SLOTS: usize = 5;
/// Status slot of the first overflowing row.
pub(crate) const SLOT_OVERFLOW: usize = 3;
/// Status slot of the first row whose mass is off.
pub(crate) const SLOT_MASS: usize = 4;

/// `exp(y)` as the core's `exp_f32` bounds it: 0 below -87, argument clamped at 88 (so the
/// result is always finite and no backend sees an out-of-range argument).
#[cube]
fn exp_clamped(y: f32) -> f32 {
    let mut out = 0.0f32;
    if y >= -87.0f32 {
        let mut x = y;
        if x > 88.0f32 {
            x = 88.0f32;
        }
        out = x.exp();
    }
    out
}

/// The scaled logit, soft-capped (`cap · tanh(s / cap)`, with `tanh` through `exp` as the
/// core computes it) when `capped`.
#[cube]
fn logit(dot: f32, scale: f32, cap: f32, #[comptime] capped: bool) -> f32 {
    let mut s = dot * scale;
    if capped {
        let e = exp_clamped(2.0f32 * s / cap);
        s = cap * (1.0f32 - 2.0f32 / (e + 1.0f32));
    }
    s
}

/// Whether `x` is a NaN or an infinity (read from the bits, so no fast-math rewrite can
/// remove the test).
#[cube]
fn not_finite(x: f32) -> bool {
    (u32::reinterpret(x) & 0x7fff_ffffu32) >= 0x7f80_0000u32
}

/// The logits of this unit `(x, y)`: `acc[i · REG + j] = Σ_f Q[h][row0 + y + UNITS i][f] ·
/// K[g][key0 + x + UNITS j][f]` for `i, j < REG`, through shared memory in chunks of `CHUNK`
/// features (each unit loads `REG` values of each tile per chunk, coalesced along the
/// features). Per chunk and feature a unit reads `2 REG` shared words for `REG²`
/// multiply-adds. Every unit of the cube must call it (it synchronises).
#[cube]
#[allow(clippy::too_many_arguments)]
fn tile_dot(
    q: &[f32],
    k: &[f32],
    q_base: usize,
    q_row: usize,
    k_base: usize,
    k_row: usize,
    n: usize,
    row0: usize,
    key0: usize,
    d: usize,
    qs: &mut Shared<[f32]>,
    ks: &mut Shared<[f32]>,
    acc: &mut Array<f32>,
) {
    let x = UNIT_POS_X as usize;
    let y = UNIT_POS_Y as usize;
    #[unroll]
    for i in 0..REG * REG {
        acc[i] = 0.0f32;
    }
    let mut a = Array::<f32>::new(REG);
    let mut b = Array::<f32>::new(REG);
    let mut j0 = 0usize;
    while j0 < d {
        // Unit (x, y) loads feature j0 + x of tile rows (and keys) y + UNITS m.
        #[unroll]
        for m in 0..REG {
            let r = y + UNITS * m;
            let mut qv = 0.0f32;
            let mut kv = 0.0f32;
            if j0 + x < d {
                if row0 + r < n {
                    qv = q[q_base + (row0 + r) * q_row + j0 + x];
                }
                if key0 + r < n {
                    kv = k[k_base + (key0 + r) * k_row + j0 + x];
                }
            }
            qs[r * CHUNK + x] = qv;
            ks[r * KS_STRIDE + x] = kv;
        }
        sync_cube();
        #[unroll]
        for f in 0..CHUNK {
            #[unroll]
            for i in 0..REG {
                a[i] = qs[(y + UNITS * i) * CHUNK + f];
                b[i] = ks[(x + UNITS * i) * KS_STRIDE + f];
            }
            #[unroll]
            for i in 0..REG {
                #[unroll]
                for j in 0..REG {
                    acc[i * REG + j] += a[i] * b[j];
                }
            }
        }
        sync_cube();
        j0 += CHUNK;
    }
}

/// Whether key `key` is visible from query `row` and valid.
#[cube]
#[allow(clippy::too_many_arguments)]
fn visible(
    mask: &[u32],
    metadata: &[u32],
    base: usize,
    n: usize,
    row: usize,
    key: usize,
    window: u32,
    #[comptime] windowed: bool,
) -> bool {
    let mut v = row < n && key <= row;
    if windowed && v {
        v = key + (window as usize) > row;
    }
    if v && metadata[base + HAS_MASK] != 0u32 {
        v = mask[metadata[base + MASK_OFFSET] as usize + key] != 0u32;
    }
    v
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn qk_scan_kernel(
    q: &[f32],
    k: &[f32],
    lse: &[f32],
    metadata: &[u32],
    status: &[Atomic<u32>],
    q_heads: u32,
    kv_heads: u32,
    d: u32,
    #[comptime] with_lse: bool,
) {
    let seq = CUBE_POS_Y as usize;
    let tensor = CUBE_POS_Z as usize;
    if seq >= metadata.len() / WORDS {
        terminate!();
    }
    let base = seq * WORDS;
    if metadata[base + ACTIVE] == 0u32 || (tensor == 2 && !with_lse) {
        terminate!();
    }
    let n = metadata[base + N] as usize;
    let d = d as usize;
    let mut width = d;
    let mut heads = q_heads as usize;
    if tensor == 1 {
        heads = kv_heads as usize;
    }
    if tensor == 2 {
        width = 1;
    }
    let total = heads * n * width;
    let stride = (CUBE_COUNT_X * CUBE_DIM_X) as usize;
    let mut p = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
    while p < total {
        let h = p / (n * width);
        let row = (p / width) % n;
        let col = p % width;
        let x = if tensor == 0 {
            q[metadata[base + Q_OFFSET] as usize
                + h * metadata[base + Q_HEAD] as usize
                + row * metadata[base + Q_ROW] as usize
                + col]
        } else if tensor == 1 {
            k[metadata[base + K_OFFSET] as usize
                + h * metadata[base + K_HEAD] as usize
                + row * metadata[base + K_ROW] as usize
                + col]
        } else {
            lse[metadata[base + L_OFFSET] as usize + h * metadata[base + L_HEAD] as usize + row]
        };
        if not_finite(x) {
            // Each unit visits its indices in ascending order: its first hit is its least.
            status[seq * SLOTS + tensor].fetch_min(p as u32);
            p = total;
        }
        p += stride;
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn qk_stats_kernel(
    q: &[f32],
    k: &[f32],
    lse: &[f32],
    mask: &[u32],
    metadata: &[u32],
    rows: &mut [f32],
    masses: &mut [f32],
    status: &[Atomic<u32>],
    group: u32,
    d: u32,
    scale: f32,
    cap: f32,
    window: u32,
    tolerance: f32,
    #[comptime] with_lse: bool,
    #[comptime] capped: bool,
    #[comptime] windowed: bool,
) {
    let seq = CUBE_POS_Z as usize;
    let h = CUBE_POS_Y as usize;
    if seq >= metadata.len() / WORDS {
        terminate!();
    }
    let base = seq * WORDS;
    let n = metadata[base + N] as usize;
    let row0 = CUBE_POS_X as usize * TILE;
    // Cube-uniform exits only: every unit of the cube takes the same branch.
    if metadata[base + ACTIVE] == 0u32 || row0 >= n {
        terminate!();
    }
    let x = UNIT_POS_X as usize;
    let y = UNIT_POS_Y as usize;
    let g = h / group as usize;
    let q_base = metadata[base + Q_OFFSET] as usize + h * metadata[base + Q_HEAD] as usize;
    let k_base = metadata[base + K_OFFSET] as usize + g * metadata[base + K_HEAD] as usize;
    let q_row = metadata[base + Q_ROW] as usize;
    let k_row = metadata[base + K_ROW] as usize;
    let mut last = row0 + TILE;
    if last > n {
        last = n;
    }
    let mut first_key = 0usize;
    if windowed && row0 + 1 > window as usize {
        first_key = row0 + 1 - window as usize;
    }
    let mut qs = Shared::<[f32]>::new_slice(TILE * CHUNK);
    let mut ks = Shared::<[f32]>::new_slice(TILE * KS_STRIDE);
    let mut acc = Array::<f32>::new(REG * REG);
    // Per row i of this unit (rows row0 + y + UNITS i), over its keys (x + UNITS j of every
    // tile): the running maximum, the sum of exp(s - max), whether a visible valid key was
    // seen (1) and whether a q·k overflowed (1).
    let mut m = Array::<f32>::new(REG);
    let mut l = Array::<f32>::new(REG);
    let mut seen = Array::<u32>::new(REG);
    let mut overflow = Array::<u32>::new(REG);
    #[unroll]
    for i in 0..REG {
        m[i] = 0.0f32;
        l[i] = 0.0f32;
        seen[i] = 0u32;
        overflow[i] = 0u32;
    }
    let mut kt = first_key / TILE;
    while kt * TILE < last {
        let key0 = kt * TILE;
        tile_dot(
            q, k, q_base, q_row, k_base, k_row, n, row0, key0, d as usize, &mut qs, &mut ks,
            &mut acc,
        );
        #[unroll]
        for i in 0..REG {
            let row = row0 + y + UNITS * i;
            #[unroll]
            for j in 0..REG {
                let key = key0 + x + UNITS * j;
                if visible(mask, metadata, base, n, row, key, window, windowed) {
                    let dot = acc[i * REG + j];
                    if not_finite(dot) {
                        overflow[i] = 1u32;
                    } else {
                        let v = logit(dot, scale, cap, capped);
                        if seen[i] == 0u32 {
                            m[i] = v;
                            l[i] = 1.0f32;
                            seen[i] = 1u32;
                        } else if v > m[i] {
                            l[i] = l[i] * exp_clamped(m[i] - v) + 1.0f32;
                            m[i] = v;
                        } else {
                            l[i] += exp_clamped(v - m[i]);
                        }
                    }
                }
            }
        }
        kt += 1;
    }
    // Combine the UNITS partial states of each row (one per x) in shared memory.
    let mut pm = Shared::<[f32]>::new_slice(TILE * UNITS);
    let mut pl = Shared::<[f32]>::new_slice(TILE * UNITS);
    let mut pf = Shared::<[u32]>::new_slice(TILE * UNITS);
    #[unroll]
    for i in 0..REG {
        let r = y + UNITS * i;
        pm[r * UNITS + x] = m[i];
        pl[r * UNITS + x] = l[i];
        pf[r * UNITS + x] = seen[i] + 2u32 * overflow[i];
    }
    sync_cube();
    if x < REG {
        // Unit (x, y), x < REG, finishes tile row y + UNITS x.
        let r = y + UNITS * x;
        let row = row0 + r;
        if row < n {
            let mut mm = 0.0f32;
            let mut ll = 0.0f32;
            let mut any = false;
            let mut over = false;
            for c in 0..UNITS {
                let f = pf[r * UNITS + c];
                if f >= 2u32 {
                    over = true;
                }
                if (f & 1u32) == 1u32 {
                    let pmv = pm[r * UNITS + c];
                    let plv = pl[r * UNITS + c];
                    if !any {
                        mm = pmv;
                        ll = plv;
                        any = true;
                    } else if pmv > mm {
                        ll = ll * exp_clamped(mm - pmv) + plv;
                        mm = pmv;
                    } else {
                        ll += plv * exp_clamped(pmv - mm);
                    }
                }
            }
            let at = h * n + row;
            let idx = metadata[base + ROWS_OFFSET] as usize + at;
            let mut out = 0.0f32;
            if over {
                status[seq * SLOTS + SLOT_OVERFLOW].fetch_min(at as u32);
            } else if any {
                if with_lse {
                    let given = lse[metadata[base + L_OFFSET] as usize
                        + h * metadata[base + L_HEAD] as usize
                        + row];
                    let mass = ll * exp_clamped(mm - given);
                    masses[idx] = mass;
                    let err = mass - 1.0f32;
                    if !(err <= tolerance && -err <= tolerance) {
                        status[seq * SLOTS + SLOT_MASS].fetch_min(at as u32);
                    }
                    out = given;
                } else {
                    out = mm + ll.ln();
                }
            }
            rows[idx] = out;
        }
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn qk_mean_kernel(
    q: &[f32],
    k: &[f32],
    mask: &[u32],
    metadata: &[u32],
    rows: &[f32],
    out: &mut [f32],
    q_heads: u32,
    group: u32,
    d: u32,
    scale: f32,
    cap: f32,
    window: u32,
    first: u32,
    #[comptime] capped: bool,
    #[comptime] windowed: bool,
) {
    let seq = CUBE_POS_Z as usize;
    if seq >= metadata.len() / WORDS {
        terminate!();
    }
    let base = seq * WORDS;
    let n = metadata[base + N] as usize;
    let key0 = CUBE_POS_X as usize * TILE;
    let row0 = CUBE_POS_Y as usize * TILE;
    // Cube-uniform exits only.
    if metadata[base + ACTIVE] == 0u32 || row0 >= n || key0 >= n {
        terminate!();
    }
    let x = UNIT_POS_X as usize;
    let y = UNIT_POS_Y as usize;
    let mut last = row0 + TILE;
    if last > n {
        last = n;
    }
    // Some key of the tile is visible from some row of it (cube-uniform).
    let mut tile_visible = key0 < last;
    if windowed && tile_visible {
        tile_visible = key0 + TILE + window as usize > row0 + 1;
    }
    let q_row = metadata[base + Q_ROW] as usize;
    let k_row = metadata[base + K_ROW] as usize;
    let rows_base = metadata[base + ROWS_OFFSET] as usize;
    let mut qs = Shared::<[f32]>::new_slice(TILE * CHUNK);
    let mut ks = Shared::<[f32]>::new_slice(TILE * KS_STRIDE);
    let mut acc = Array::<f32>::new(REG * REG);
    let mut sum = Array::<f32>::new(REG * REG);
    #[unroll]
    for i in 0..REG * REG {
        sum[i] = 0.0f32;
    }
    if tile_visible {
        for h in 0..q_heads as usize {
            let g = h / group as usize;
            let q_base = metadata[base + Q_OFFSET] as usize + h * metadata[base + Q_HEAD] as usize;
            let k_base = metadata[base + K_OFFSET] as usize + g * metadata[base + K_HEAD] as usize;
            tile_dot(
                q, k, q_base, q_row, k_base, k_row, n, row0, key0, d as usize, &mut qs, &mut ks,
                &mut acc,
            );
            #[unroll]
            for i in 0..REG {
                let row = row0 + y + UNITS * i;
                if row < n {
                    let z = rows[rows_base + h * n + row];
                    #[unroll]
                    for j in 0..REG {
                        let key = key0 + x + UNITS * j;
                        if visible(mask, metadata, base, n, row, key, window, windowed) {
                            let s = logit(acc[i * REG + j], scale, cap, capped);
                            sum[i * REG + j] += exp_clamped(s - z);
                        }
                    }
                }
            }
        }
    }
    #[unroll]
    for i in 0..REG {
        let row = row0 + y + UNITS * i;
        #[unroll]
        for j in 0..REG {
            let key = key0 + x + UNITS * j;
            if row < n && key < n {
                let dst = metadata[base + OUT_OFFSET] as usize + row * n + key;
                let mut v = sum[i * REG + j];
                if first == 0u32 {
                    v += out[dst];
                }
                out[dst] = v;
            }
        }
    }
}

/// Launches `qk_scan` for one layer.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_scan(
    client: &Client,
    launch: &Launch,
    q: &DeviceBuffer,
    k: &DeviceBuffer,
    lse: &DeviceBuffer,
    metadata: &DeviceBuffer,
    status: &DeviceBuffer,
    heads: (u32, u32),
    d: u32,
    with_lse: bool,
) {
    // SAFETY: `DeviceBuffer::arg` declares each buffer with its true length. The kernel
    // exits for a sequence index past the records and for an inactive record. An active
    // record was written by `QkAccumulator::add_layer` (in `qk.rs`) only after it checked
    // that the sequence's last element of `Q` (`q_offset + (H_q - 1) q_head + (n - 1) q_row
    // + d - 1`), of `K` and, with `with_lse`, of the log-sum-exp lie inside those buffers and
    // below 2^32, and that `H_q · n · d` fits in `u32`; the flat index `p < heads · n · width`
    // decodes to `h < heads`, `row < n`, `col < width`, so every read is in bounds. `status`
    // holds `SLOTS` words per record and `tensor < 3 <= SLOTS`.
    unsafe {
        qk_scan_kernel::launch_unchecked(
            client,
            launch.cube_count(),
            launch.cube_dim(),
            q.arg(),
            k.arg(),
            lse.arg(),
            metadata.arg(),
            status.arg(),
            heads.0,
            heads.1,
            d,
            with_lse,
        );
    }
}

/// The buffers one layer's launches read and write.
pub(crate) struct LayerBuffers<'a> {
    pub(crate) q: &'a DeviceBuffer,
    pub(crate) k: &'a DeviceBuffer,
    pub(crate) lse: &'a DeviceBuffer,
    pub(crate) mask: &'a DeviceBuffer,
    pub(crate) metadata: &'a DeviceBuffer,
    pub(crate) rows: &'a DeviceBuffer,
    pub(crate) masses: &'a DeviceBuffer,
    pub(crate) status: &'a DeviceBuffer,
    pub(crate) out: &'a DeviceBuffer,
}

/// The scalar parameters of one layer's launches.
#[derive(Clone, Copy)]
pub(crate) struct Params {
    pub(crate) q_heads: u32,
    pub(crate) group: u32,
    pub(crate) d: u32,
    pub(crate) scale: f32,
    pub(crate) cap: Option<f32>,
    pub(crate) window: Option<u32>,
    pub(crate) tolerance: f32,
}

/// Launches `qk_stats` for one layer.
pub(crate) fn launch_stats(
    client: &Client,
    launch: &Launch,
    b: &LayerBuffers<'_>,
    p: Params,
    with_lse: bool,
) {
    // SAFETY: `DeviceBuffer::arg` declares each buffer with its true length. Cubes exit for
    // a sequence past the records, an inactive record, or a row tile at or past `n`. For an
    // active record `QkAccumulator::add_layer` checked that `Q` rows `< n` of heads `< H_q`,
    // `K` rows `< n` of heads `< H_kv`, features `< d` and (with `with_lse`) the
    // log-sum-exp lie inside their buffers, below 2^32; `tile_dot` reads only rows and
    // keys `< n` and features `< d`, and `g = h / group < H_kv` because the grid's y is
    // `H_q = group · H_kv`. The mask is read at `mask_offset + key`, `key < n`, and
    // `QkAccumulator::new` laid each sequence's `n` mask words inside `mask`. `rows` and
    // `masses` hold `H_q · n` words per sequence at `rows_offset` (`masses` only with
    // `with_lse`), and `status` `SLOTS` words per record.
    unsafe {
        qk_stats_kernel::launch_unchecked(
            client,
            launch.cube_count(),
            launch.cube_dim(),
            b.q.arg(),
            b.k.arg(),
            b.lse.arg(),
            b.mask.arg(),
            b.metadata.arg(),
            b.rows.arg(),
            b.masses.arg(),
            b.status.arg(),
            p.group,
            p.d,
            p.scale,
            p.cap.unwrap_or(1.0),
            p.window.unwrap_or(0),
            p.tolerance,
            with_lse,
            p.cap.is_some(),
            p.window.is_some(),
        );
    }
}

/// Launches `qk_mean` for one layer.
pub(crate) fn launch_mean(
    client: &Client,
    launch: &Launch,
    b: &LayerBuffers<'_>,
    p: Params,
    first: bool,
) {
    // SAFETY: as `launch_stats` for `Q`, `K`, the mask and `rows`; the loop over heads runs
    // `h < H_q` and `g = h / group < H_kv`. Cubes exit for row or key tiles at or past `n`,
    // and a unit writes `Ā[row][key]` only for `row, key < n`, at `out_offset + row · n +
    // key`: `QkAccumulator::new` laid the `n²` outputs of the sequences back to back
    // inside `out`, below 2^32.
    unsafe {
        qk_mean_kernel::launch_unchecked(
            client,
            launch.cube_count(),
            launch.cube_dim(),
            b.q.arg(),
            b.k.arg(),
            b.mask.arg(),
            b.metadata.arg(),
            b.rows.arg(),
            b.out.arg(),
            p.q_heads,
            p.group,
            p.d,
            p.scale,
            p.cap.unwrap_or(1.0),
            p.window.unwrap_or(0),
            u32::from(first),
            p.cap.is_some(),
            p.window.is_some(),
        );
    }
}
