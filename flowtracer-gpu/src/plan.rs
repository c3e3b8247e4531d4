//! Launch geometry: what every pass launches, as a value tests can inspect.
//!
//! Every entry point first builds its [`LaunchPlan`] on the host from the sequence lengths
//! and the [`GpuOptions`], then launches exactly the kernels the plan lists, with the plan's
//! geometry. So the plan a test inspects is the plan that runs.

use alloc::vec::Vec;

use cubecl::prelude::*;

/// Tuning knobs of the kernels.
///
/// `block` is the side of the triangular block solved inside one cube (one unit per row);
/// the reach and flow passes take `2 * ceil(N / block)` launches each. `units` is the
/// number of units per cube of the element-wise and matrix-vector kernels. Both must be
/// powers of two; [`GpuOptions::fit`] clamps them to what a device supports, and records
/// the device's cubes per grid dimension (WebGPU's 65535 until then), within which every
/// element-wise launch folds its grid (see [`Launch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct GpuOptions {
    /// Rows per triangular block (default 64).
    pub block: u32,
    /// Units per cube of the row-parallel kernels (default 256).
    pub units: u32,
    /// Cubes per grid dimension (the smallest of the device's three).
    grid: u32,
}

/// Cubes per grid dimension before [`GpuOptions::fit`] reads the device's: WebGPU's
/// `maxComputeWorkgroupsPerDimension` default, which wgpu reports on every adapter.
const DEFAULT_GRID: u32 = 65_535;

impl Default for GpuOptions {
    fn default() -> Self {
        Self {
            block: 64,
            units: 256,
            grid: DEFAULT_GRID,
        }
    }
}

impl GpuOptions {
    /// Sets the block size (rounded down to a power of two, at least 1).
    #[must_use]
    pub fn with_block(mut self, block: u32) -> Self {
        self.block = pow2_floor(block.max(1));
        self
    }

    /// Sets the units per cube (rounded down to a power of two, at least 1).
    #[must_use]
    pub fn with_units(mut self, units: u32) -> Self {
        self.units = pow2_floor(units.max(1));
        self
    }

    /// Clamps both knobs to the limits of the device behind `client`: units per cube, and
    /// shared memory (the flow block keeps a `block x block` f32 tile plus `block` values);
    /// and records the device's cubes per grid dimension.
    #[must_use]
    pub fn fit(self, client: &Client) -> Self {
        let hw = &client.properties().hardware;
        let max_units = hw.max_units_per_cube.min(hw.max_cube_dim.0).max(1);
        let mut block = pow2_floor(self.block.clamp(1, max_units));
        while block > 1 && shared_bytes(block) > hw.max_shared_memory_size {
            block /= 2;
        }
        let units = pow2_floor(self.units.clamp(1, max_units));
        let (x, y, z) = hw.max_cube_count;
        let grid = x.min(y).min(z).max(1);
        Self { block, units, grid }
    }

    /// Cubes per grid dimension the element-wise launches stay within (the device's after
    /// [`GpuOptions::fit`], 65535 before).
    pub fn grid(&self) -> u32 {
        self.grid
    }
}

/// Shared memory used by the flow block kernel (the largest user).
pub(crate) fn shared_bytes(block: u32) -> usize {
    let b = block as usize;
    (b * b + b) * core::mem::size_of::<f32>()
}

fn pow2_floor(x: u32) -> u32 {
    if x == 0 {
        1
    } else {
        1 << (31 - x.leading_zeros())
    }
}

/// Every kernel this crate launches (one variant per `#[cube]` kernel).
///
/// [`Launch::kernel`] names one; [`LaunchPlan::count`] and [`LaunchPlan::of`] select by it.
/// `Display` writes the kernel's snake-case name (`"reach_block"`), as in `docs/gpu.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kernel {
    /// The data checks of a trace (non-finite, negative, row mass), one unit per row.
    Check,
    /// Zeroes the reach accumulator `h`.
    ReachZero,
    /// One diagonal block of the backward (reach) sweep.
    ReachBlock,
    /// The rows before a reach block: adds the block's contribution.
    ReachUpdate,
    /// Counts the sources `|Q+|` and zeroes `u`.
    FlowInit,
    /// One diagonal block of the forward (flow) sweep.
    FlowBlock,
    /// The rows after a flow block: adds the block's contribution.
    FlowUpdate,
    /// `tau = 2 f` where `h > 0`.
    Throughput,
    /// Adds one layer's heads into `Ā`.
    AggregateLayer,
    /// Gathers the first negative value a layer launch found.
    AggregateNegative,
    /// Scales `Ā` by `1 / (layers * heads)`.
    AggregateScale,
    /// The first non-finite value of one layer's `Q`, `K` and log-sum-exp.
    QkScan,
    /// Each row's log-sum-exp over its visible keys (or the check of a saved one).
    QkStats,
    /// Adds one layer's head-summed probabilities into `Ā`, tile by tile.
    QkMean,
    /// Per-response top-ρ selection and token weights.
    TokenWeights,
    /// Shaped advantages `w * A`.
    ShapeAdvantage,
}

impl Kernel {
    /// The kernel's snake-case name (`"reach_block"`).
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Check => "check",
            Kernel::ReachZero => "reach_zero",
            Kernel::ReachBlock => "reach_block",
            Kernel::ReachUpdate => "reach_update",
            Kernel::FlowInit => "flow_init",
            Kernel::FlowBlock => "flow_block",
            Kernel::FlowUpdate => "flow_update",
            Kernel::Throughput => "throughput",
            Kernel::AggregateLayer => "aggregate_layer",
            Kernel::AggregateNegative => "aggregate_negative",
            Kernel::AggregateScale => "aggregate_scale",
            Kernel::QkScan => "qk_scan",
            Kernel::QkStats => "qk_stats",
            Kernel::QkMean => "qk_mean",
            Kernel::TokenWeights => "token_weights",
            Kernel::ShapeAdvantage => "shape_advantage",
        }
    }
}

impl core::fmt::Display for Kernel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// One kernel launch: which kernel, how many cubes, how many units per cube.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    /// Which kernel.
    pub kernel: Kernel,
    /// Cubes along x, y, z.
    pub cubes: (u32, u32, u32),
    /// Units per cube along x, y, z.
    pub cube_dim: (u32, u32, u32),
    /// Which step of a blocked sweep this launch belongs to (0 for other kernels).
    pub step: u32,
}

impl Launch {
    /// A launch of `cubes` cubes of `cube_dim` units.
    pub(crate) fn new(kernel: Kernel, cubes: (u32, u32, u32), cube_dim: (u32, u32, u32)) -> Self {
        Self {
            kernel,
            cubes,
            cube_dim,
            step: 0,
        }
    }

    /// The same launch, tagged as step `step` of a blocked sweep.
    pub(crate) fn at_step(mut self, step: usize) -> Self {
        self.step = to_u32(step);
        self
    }

    /// An element-wise launch covering `len` items with `options.units` units per cube (at
    /// least one cube, so the launch is never empty), folded into y (then z) so that no grid
    /// dimension exceeds `options.grid()` cubes: `Ā` of `N = 4096` alone needs 65536 cubes
    /// of 256, one more than wgpu allows. The kernel takes its flat index from every grid
    /// dimension (`ABSOLUTE_POS`, linear over x, y and z) and guards it against `len`: the
    /// folded grid may cover up to `x - 1` cubes more than `len` needs.
    ///
    /// # Panics
    ///
    /// If `len` needs more than `grid³` cubes (beyond 2^32 items anyway).
    pub(crate) fn elementwise(kernel: Kernel, len: usize, options: &GpuOptions) -> Self {
        let grid = options.grid.max(1) as usize;
        let cubes = len.div_ceil(options.units as usize).max(1);
        let x = cubes.min(grid);
        let rest = cubes.div_ceil(x);
        let y = rest.min(grid);
        let z = rest.div_ceil(y);
        assert!(z <= grid, "launch geometry exceeds the device's grid");
        Self::new(
            kernel,
            (to_u32(x), to_u32(y), to_u32(z)),
            (options.units, 1, 1),
        )
    }

    /// Total units launched (`cubes * cube_dim`, all three axes).
    pub fn units(&self) -> u64 {
        let (a, b, c) = self.cubes;
        let (x, y, z) = self.cube_dim;
        u64::from(a) * u64::from(b) * u64::from(c) * u64::from(x) * u64::from(y) * u64::from(z)
    }

    /// Units per cube.
    pub fn units_per_cube(&self) -> u32 {
        self.cube_dim.0 * self.cube_dim.1 * self.cube_dim.2
    }

    pub(crate) fn cube_count(&self) -> CubeCount {
        CubeCount::Static(self.cubes.0, self.cubes.1, self.cubes.2)
    }

    pub(crate) fn cube_dim(&self) -> CubeDim {
        CubeDim::new_3d(self.cube_dim.0, self.cube_dim.1, self.cube_dim.2)
    }
}

/// The ordered list of launches of one call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchPlan {
    /// The launches, in submission order.
    pub launches: Vec<Launch>,
}

impl LaunchPlan {
    /// Number of launches.
    pub fn len(&self) -> usize {
        self.launches.len()
    }

    /// Whether the plan launches nothing.
    pub fn is_empty(&self) -> bool {
        self.launches.is_empty()
    }

    /// Number of launches of `kernel`.
    pub fn count(&self, kernel: Kernel) -> usize {
        self.of(kernel).count()
    }

    /// The launches of `kernel`, in order.
    pub fn of(&self, kernel: Kernel) -> impl Iterator<Item = &Launch> + '_ {
        self.launches.iter().filter(move |l| l.kernel == kernel)
    }

    /// The smallest number of units of any launch (0 for an empty plan).
    pub fn min_units(&self) -> u64 {
        self.launches.iter().map(Launch::units).min().unwrap_or(0)
    }

    pub(crate) fn push(&mut self, launch: Launch) -> Launch {
        self.launches.push(launch);
        launch
    }
}

/// Converts a geometry count to `u32`.
///
/// # Panics
///
/// If it does not fit (a grid that large cannot be launched anyway).
pub(crate) fn to_u32(x: usize) -> u32 {
    u32::try_from(x).expect("launch geometry exceeds u32")
}
