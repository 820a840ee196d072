//! Engines on the driving study: the simulated 2 mm dataset (N = 58 post - pre
//! differences, interaction contrast, sign flips), in one run (see `voxflip::bench`):
//! - the machine's sgemm peak (gemm crate, 4096^3) as the yardstick,
//! - the CPU engine: time for VOXFLIP_BENCH_PERMS sign flips (default 5,000), effective
//!   GFLOP/s (2 q N V per permutation) and its fraction of the sgemm peak,
//! - the GPU engine when a hardware adapter exists (lavapipe too with
//!   VOXFLIP_BENCH_SOFTWARE=1), and the GPU/CPU time ratio,
//! - with VOXFLIP_BENCH_TFCE=N: N sign flips with TFCE on each engine, and the ratio to the
//!   voxelwise-only run,
//!
//! then criterion's statistics for one batch of the CPU engine.
//!
//! `cargo bench --bench engines`. Numbers are for the README, never for pass/fail.
use criterion::Criterion;
use voxflip::engine::cpu::CpuEngine;
use voxflip::engine::gpu::AdapterChoice;
use voxflip::engine::Engine;
use voxflip::perm::{PermKind, PermSet};

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

fn main() {
    let nperm = env_usize("VOXFLIP_BENCH_PERMS").unwrap_or(5000);
    let tfce = env_usize("VOXFLIP_BENCH_TFCE");
    let allow_software = std::env::var("VOXFLIP_BENCH_SOFTWARE").as_deref() == Ok("1");
    voxflip::bench::run(nperm, tfce.is_some(), tfce.unwrap_or(nperm), Some(AdapterChoice { name: None, allow_software }))
        .expect("benchmark run");

    // criterion's view of one batch of the CPU engine.
    let study = voxflip::bench::driving_study();
    let problem = &study.problem;
    let perms = PermSet::generate(problem.n, PermKind::SignFlip, &vec![0; problem.n], 1000, 1).unwrap();
    let mut cpu = CpuEngine::new();
    let mut c = Criterion::default().sample_size(10).configure_from_args();
    let batch = cpu.preferred_batch();
    cpu.prepare(problem).unwrap();
    let observed = vec![1.0f32; problem.v];
    c.bench_function(&format!("cpu_batch_{batch}_signflips_2mm"), |b| {
        b.iter(|| cpu.run_batch(&perms, 0..batch, Some(&observed), None).unwrap())
    });
    c.final_summary();
}
