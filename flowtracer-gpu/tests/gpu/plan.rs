//! The launch plan's shape: launches grow as N / block, each launch covers many units.

use flowtracer_gpu::{GpuOptions, Kernel, trace_plan};

#[test]
fn launches_scale_with_n_over_block() {
    let options = GpuOptions::default().with_block(64).with_units(256);
    for n in [1usize, 64, 65, 1000, 8192, 32768] {
        let plan = trace_plan(&[n], n, &options);
        let steps = n.div_ceil(64);
        assert_eq!(plan.count(Kernel::ReachBlock), steps, "n = {n}");
        assert_eq!(plan.count(Kernel::FlowBlock), steps, "n = {n}");
        assert_eq!(plan.count(Kernel::ReachUpdate), steps - 1, "n = {n}");
        assert_eq!(plan.count(Kernel::FlowUpdate), steps - 1, "n = {n}");
        assert_eq!(plan.len(), 4 * steps + 2, "n = {n}");
        // No single-unit kernels: every launch has at least a block's worth of units.
        assert!(plan.min_units() >= 64, "n = {n}: {:?}", plan.launches);
        for l in plan
            .of(Kernel::ReachBlock)
            .chain(plan.of(Kernel::FlowBlock))
        {
            assert_eq!(l.units_per_cube(), 64);
        }
    }
    // Doubling the block halves the launches (up to the constant).
    let small = trace_plan(&[8192], 8192, &GpuOptions::default().with_block(32));
    let large = trace_plan(&[8192], 8192, &GpuOptions::default().with_block(64));
    assert_eq!(small.len() - 2, 2 * (large.len() - 2));
}

#[test]
fn batch_size_does_not_add_launches() {
    let options = GpuOptions::default();
    let one = trace_plan(&[500], 500, &options);
    let many = trace_plan(&[500, 20, 499, 1, 300], 1320, &options);
    assert_eq!(one.len(), many.len());
    // The update of step s covers every remaining row of every sequence.
    let first_update = many.of(Kernel::ReachUpdate).next().unwrap();
    assert_eq!(first_update.cubes.1, 5);
    assert!(first_update.units() >= 500 - 64);
}

#[test]
fn empty_batch_launches_nothing() {
    assert!(trace_plan(&[], 0, &GpuOptions::default()).is_empty());
    assert!(trace_plan(&[0, 0], 0, &GpuOptions::default()).is_empty());
}

/// No launch exceeds the grid limit (65535 cubes per dimension on wgpu): `2^24` tokens
/// need 65536 cubes of 256 for the element-wise `reach_zero` and `throughput`, which now
/// fold into y and still cover every token.
#[test]
fn element_wise_launches_fold_within_the_grid_limit() {
    let options = GpuOptions::default();
    assert_eq!(options.grid(), 65_535);
    let lengths = vec![4096; 4096];
    let tokens = 1 << 24;
    let plan = trace_plan(&lengths, tokens, &options);
    for l in &plan.launches {
        let (x, y, z) = l.cubes;
        assert!(x.max(y).max(z) <= options.grid(), "{l:?}");
    }
    for kernel in [Kernel::ReachZero, Kernel::Throughput] {
        let l = plan.of(kernel).next().unwrap();
        assert_eq!(l.cubes, (65_535, 2, 1), "{kernel}");
        assert!(l.units() >= tokens as u64, "{kernel}");
    }
}
