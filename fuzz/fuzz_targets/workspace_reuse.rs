//! A sequence of traces of different sizes through one reused workspace and output must
//! equal fresh calls exactly (catches stale scratch).
#![no_main]

use flowtracer_core::{Trace, TraceConfig, Workspace, trace, trace_with_workspace};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|cases: Vec<flowtracer_fuzz::TraceCase>| {
    let mut ws = Workspace::new();
    let mut out = Trace::new();
    for case in cases.iter().take(6) {
        let p = case.problem();
        let cfg = TraceConfig::default().with_answer_mode(p.mode).with_edge_threshold(p.threshold);
        let fresh = trace(&p.attention, p.n, p.question.clone(), p.answer.clone(), &cfg);
        let reused = trace_with_workspace(&p.attention, p.n, p.question.clone(), p.answer.clone(), &cfg, &mut ws, &mut out);
        match fresh {
            Ok(t) => {
                assert_eq!(reused, Ok(()), "{p:?}");
                assert_eq!(t, out, "reused workspace differs from a fresh one on {p:?}");
            }
            Err(e) => assert_eq!(reused, Err(e), "{p:?}"),
        }
    }
});
