//! The `.npy` reader on arbitrary bytes: never panics, never allocates more than the file
//! implies, and every `Ok` holds exactly as many values as its shape says.
#![no_main]

use flowtracer_fuzz::alloc_guard::{Counting, peak_during};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static GLOBAL: Counting = Counting;

fuzz_target!(|bytes: &[u8]| {
    let (result, peak) = peak_during(|| flowtracer_io::read_npy(bytes));
    let cap = 2 * bytes.len() + 64 * 1024;
    assert!(peak <= cap, "allocated {peak} bytes for a {}-byte file", bytes.len());
    match result {
        Ok(a) => {
            let count: usize = a.shape.iter().product();
            assert_eq!(a.data.len(), count, "data length does not match shape {:?}", a.shape);
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty() && !msg.contains('\n'), "error message must be one line: {msg:?}");
        }
    }
});
