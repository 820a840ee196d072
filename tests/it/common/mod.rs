//! Helpers the integration tests share: the GPU-or-skip fixtures, the named tolerance, and
//! running the binary.
#![allow(dead_code)]
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};
use voxflip_engines::gpu::{list_adapters, AdapterChoice, GpuEngine, GpuSpatial};
use voxflip_engines::GpuOptions;

/// A relative tolerance with a floor of 1 in the scale of the values compared, for
/// statistics of order 1 and larger (each use says why its value suffices).
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    pub rel: f32,
}

impl Tolerance {
    pub const fn rel(rel: f32) -> Tolerance {
        Tolerance { rel }
    }

    /// The difference allowed from `reference`: rel * max(|reference|, 1).
    pub fn band(&self, reference: f32) -> f32 {
        self.rel * reference.abs().max(1.0)
    }

    /// Whether `a` and `b` agree: |a - b| <= rel * max(|a|, |b|, 1).
    pub fn close(&self, a: f32, b: f32) -> bool {
        (a - b).abs() <= self.rel * a.abs().max(b.abs()).max(1.0)
    }
}

/// Whether GPU tests must run (CI): VOXFLIP_REQUIRE_GPU=1.
pub fn gpu_required() -> bool {
    std::env::var("VOXFLIP_REQUIRE_GPU").as_deref() == Ok("1")
}

/// Says on the terminal that `what` was skipped and why: written to the process's stderr
/// directly, so it shows even when the test harness captures the test's output.
pub fn skipped(what: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {what}: {why} (set VOXFLIP_REQUIRE_GPU=1 to fail instead)");
}

fn set_runtime_dir() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", "/tmp");
    }
}

/// Whether an adapter with compute shaders exists; if not, skips `what` (or fails it when
/// GPU tests are required).
pub fn gpu_usable(what: &str) -> bool {
    set_runtime_dir();
    let usable = list_adapters().into_iter().any(|a| a.compute);
    if !usable {
        if gpu_required() {
            panic!("VOXFLIP_REQUIRE_GPU=1 but no usable GPU adapter");
        }
        skipped(what, "no GPU adapter");
    }
    usable
}

/// The `what` when a GPU stage could not be made: a failure where an adapter exists (a
/// shader that does not compile, a device that cannot be opened), else a skip.
fn no_gpu<T>(what: &str, e: impl std::fmt::Display) -> Option<T> {
    let usable: Vec<_> = list_adapters().into_iter().filter(|a| a.compute).collect();
    if !usable.is_empty() {
        panic!("GPU adapter present ({}) but {what} failed: {e}", usable[0].name);
    }
    if gpu_required() {
        panic!("VOXFLIP_REQUIRE_GPU=1 but no usable GPU adapter: {e}");
    }
    skipped(what, &format!("no GPU adapter: {e}"));
    None
}

/// The GPU engine on any adapter (software included), or None (skipped) without one.
pub fn gpu_engine(what: &str) -> Option<GpuEngine> {
    gpu_engine_with(what, &GpuOptions::default())
}

/// [`gpu_engine`] with options.
pub fn gpu_engine_with(what: &str, opts: &GpuOptions) -> Option<GpuEngine> {
    set_runtime_dir();
    match GpuEngine::new(&AdapterChoice { name: None, allow_software: true }, opts) {
        Ok(g) => Some(g),
        Err(e) => no_gpu(what, e),
    }
}

/// The GPU spatial reducer on a device of its own, or None (skipped) without an adapter.
pub fn gpu_spatial(what: &str) -> Option<GpuSpatial> {
    set_runtime_dir();
    match GpuSpatial::open(&AdapterChoice { name: None, allow_software: true }) {
        Ok(g) => Some(g),
        Err(e) => no_gpu(what, e),
    }
}

/// The first words of `voxflip interaction` on the study `voxflip simulate --out data`
/// writes into the test's directory: its inputs, named.
pub const SIMULATED_INTERACTION: [&str; 11] = [
    "interaction",
    "--pre",
    "data/pre.nii.gz",
    "--post",
    "data/post.nii.gz",
    "--participants",
    "data/participants.tsv",
    "--group-column",
    "group",
    "-m",
    "data/mask.nii.gz",
];

/// Runs the voxflip binary with `args` in `dir`.
pub fn voxflip(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_voxflip"))
        .args(args)
        .current_dir(dir)
        .env("XDG_RUNTIME_DIR", std::env::var("XDG_RUNTIME_DIR").unwrap_or_else(|_| "/tmp".into()))
        .output()
        .expect("the voxflip binary runs")
}

pub use voxflip_testkit::all_orderings;
