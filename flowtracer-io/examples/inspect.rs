//! Prints the arrays of a `.npy` or `.safetensors` file, one line each, without decoding
//! the data of a safetensors file:
//!
//! ```text
//! cargo run -p flowtracer-io --example inspect -- FILE
//! ```
//!
//! Exit code 2 with one line on stderr for a file the readers reject (as `flowtracer score`
//! does). `docs/robustness.md` measures the readers' peak memory with it.

use std::process::ExitCode;

use flowtracer_io::{SafeTensors, read_npy};

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: inspect FILE");
        return ExitCode::from(2);
    };
    let shown = std::path::Path::new(&path).display().to_string();
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("cannot read {shown}: {e}");
            return ExitCode::from(2);
        }
    };
    let result = if bytes.starts_with(b"\x93NUMPY") {
        read_npy(&bytes).map(|a| println!("{shown}: shape {:?}, {} values", a.shape, a.data.len()))
    } else {
        SafeTensors::parse(&bytes).map(|file| {
            println!("{shown}: {} tensors", file.tensors().len());
            for t in file.tensors().iter().take(20) {
                println!("  {:?} {} {:?}", t.name, t.dtype, t.shape);
            }
        })
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{shown}: {e}");
            ExitCode::from(2)
        }
    }
}
