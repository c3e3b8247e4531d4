//! `trace` on arbitrary attention (NaN, infinities, negatives, subnormals, heavy rows,
//! garbage above the diagonal), spans (ranges, sorted position lists, raw lists that may be
//! unsorted or repeated, explicit responses) and options, f32 and f64. Oracle:
//! `flowtracer_fuzz::check_trace` (errors match the planted defect or bad span, in the
//! order of method §13; results are finite, conserve flow and equal `reference`, which
//! takes the spans as position lists).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|case: flowtracer_fuzz::TraceCase| {
    flowtracer_fuzz::check_trace(&case.problem());
});
