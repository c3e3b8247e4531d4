//! A run of sequences of different sizes and spans through one reused `Tracer` (its
//! scratch), through `trace_into` into one reused `Trace` per precision, and through
//! `trace_batch` (one scratch for the whole batch) must equal fresh traces exactly, reach
//! included (catches stale scratch and stale outputs).
#![no_main]

use flowtracer_core::{Config, FlowFloat, Sequence, Trace, Tracer};
use flowtracer_fuzz::{Problem, TraceCase};
use libfuzzer_sys::fuzz_target;

/// Checks one sequence through the reused `tracer` and through `trace_into` on the reused
/// `into` and `out` against a fresh tracer.
fn one<F: FlowFloat>(
    p: &Problem,
    seq: &Sequence<'_, F>,
    config: Config,
    tracer: &mut Tracer,
    into: &mut Tracer,
    out: &mut Trace<F>,
) {
    let mut fresh_tracer = Tracer::new(config).expect("valid by construction");
    let fresh = fresh_tracer.trace(seq);
    let again = tracer.trace(seq);
    let filled = into.trace_into(seq, out);
    assert_eq!(
        again, fresh,
        "a reused tracer differs from a fresh one on {p:?}"
    );
    match fresh {
        Ok(t) => {
            assert_eq!(filled, Ok(()), "{p:?}");
            assert_eq!(
                &t, out,
                "trace_into a reused Trace differs from a fresh trace on {p:?}"
            );
            let reach = fresh_tracer.last_reach();
            assert_eq!(
                tracer.last_reach(),
                reach,
                "last_reach of the reused tracer on {p:?}"
            );
            assert_eq!(
                into.last_reach(),
                reach,
                "last_reach after trace_into on {p:?}"
            );
        }
        Err(e) => assert_eq!(filled, Err(e), "{p:?}"),
    }
}

fuzz_target!(|cases: Vec<TraceCase>| {
    let problems: Vec<Problem> = cases.iter().take(6).map(TraceCase::problem).collect();
    let Some(first) = problems.first() else {
        return;
    };
    // One configuration for the whole run (the first case's): one tracer serves it all.
    let config = first.config();
    let mut tracer = Tracer::new(config).expect("valid by construction");
    let mut into = Tracer::new(config).expect("valid by construction");
    let (mut out64, mut out32) = (Trace::<f64>::default(), Trace::<f32>::default());
    let singles: Vec<Vec<f32>> = problems.iter().map(Problem::attention_f32).collect();
    let (mut batch64, mut batch32) = (Vec::new(), Vec::new());
    for (p, a32) in problems.iter().zip(&singles) {
        // Spans that build no sequence are the `trace` target's business.
        if p.single {
            let Ok(seq) = Sequence::dense(a32, p.spans()) else {
                continue;
            };
            one(p, &seq, config, &mut tracer, &mut into, &mut out32);
            batch32.push(seq);
        } else {
            let Ok(seq) = Sequence::dense(&p.attention, p.spans()) else {
                continue;
            };
            one(p, &seq, config, &mut tracer, &mut into, &mut out64);
            batch64.push(seq);
        }
    }
    for (seq, got) in batch64.iter().zip(tracer.trace_batch(&batch64)) {
        assert_eq!(
            got,
            Tracer::new(config).unwrap().trace(seq),
            "trace_batch differs from a fresh trace"
        );
    }
    for (seq, got) in batch32.iter().zip(tracer.trace_batch(&batch32)) {
        assert_eq!(
            got,
            Tracer::new(config).unwrap().trace(seq),
            "trace_batch differs from a fresh trace (f32)"
        );
    }
});
