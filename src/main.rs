//! voxflip: whole-brain permutation inference for neuroimaging group studies.
//!
//! The binary: the command line ([`cli`]) parsed and validated into options ([`options`]),
//! the commands ([`commands`]), the pipeline that runs an analysis through the engines
//! ([`pipeline`]), its outputs ([`outputs`]) and the summary ([`summary`]). The work itself
//! is in the library crates (crates/): voxflip-io, voxflip-stats, voxflip-shaders,
//! voxflip-engines, voxflip-simulate. Only this crate prints.
use std::process::ExitCode;

mod cli;
mod commands;
mod error;
mod interrupt;
mod labels;
mod logger;
mod options;
mod outputs;
mod permout;
mod permutations;
mod pipeline;
mod progress;
mod report;
mod state;
mod summary;

fn main() -> ExitCode {
    // Without XDG_RUNTIME_DIR, the GL and Vulkan window-system probes that wgpu's adapter
    // enumeration triggers print "error: XDG_RUNTIME_DIR is invalid" lines on stderr (on a
    // headless machine they are harmless). Point it at the temporary directory before any
    // thread starts.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    interrupt::install();
    cli::main(std::env::args().collect())
}
