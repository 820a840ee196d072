//! criterion's statistics for one batch of each engine on the driving study: the simulated
//! 2 mm dataset (N = 58 post - pre differences, interaction contrast, sign flips). The
//! whole-contrast timings, their ratios and effective GFLOP/s, measured in one run, are
//! `voxflip bench` (and `voxflip bench --tfce`).
//!
//! `cargo bench -p voxflip-engines`; the GPU engine joins when a hardware adapter exists
//! (any adapter, software included, with VOXFLIP_BENCH_SOFTWARE=1). Numbers are for the
//! README, never for pass/fail.
// A benchmark reports on the terminal.
#![allow(clippy::print_stderr)]
use criterion::Criterion;
use voxflip_engines::cpu::CpuEngine;
use voxflip_engines::gpu::{AdapterChoice, GpuEngine};
use voxflip_engines::{Engine, GpuOptions};
use voxflip_stats::{PermKind, PermSet};

fn main() {
    let study = voxflip_simulate::driving_study();
    let problem = &study.problem;
    let perms = PermSet::generate(problem.n, PermKind::SignFlip, &vec![0; problem.n], 1000, 1).unwrap();
    let observed = vec![1.0f32; problem.v];
    let mut engines = vec![Engine::Cpu(CpuEngine::new())];
    let allow_software = std::env::var("VOXFLIP_BENCH_SOFTWARE").as_deref() == Ok("1");
    match GpuEngine::new(&AdapterChoice { name: None, allow_software }, &GpuOptions::default()) {
        Ok(g) => engines.push(Engine::Gpu(Box::new(g))),
        Err(e) => eprintln!("gpu engine unavailable: {e}"),
    }
    let mut c = Criterion::default().sample_size(10).configure_from_args();
    for engine in engines.iter_mut() {
        engine.prepare(problem).unwrap();
        let batch = engine.preferred_batch().min(perms.len());
        let name = match engine {
            Engine::Cpu(_) => "cpu",
            Engine::Gpu(_) => "gpu",
        };
        // Warm-up outside the measurement: shader compilation happens at first dispatch.
        engine.run_batch(&perms, 0..batch, Some(&observed), None).unwrap();
        c.bench_function(&format!("{name}_batch_{batch}_signflips_2mm"), |b| {
            b.iter(|| engine.run_batch(&perms, 0..batch, Some(&observed), None).unwrap())
        });
    }
    c.final_summary();
}
