//! `trace` on arbitrary attention (NaN, infinities, negatives, subnormals, heavy rows,
//! garbage above the diagonal), spans and options, f32 and f64. Oracle:
//! `flowtracer_fuzz::check_trace` (errors match the planted defect; results are finite,
//! conserve flow and equal `reference`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|case: flowtracer_fuzz::TraceCase| {
    flowtracer_fuzz::check_trace(&case.problem());
});
