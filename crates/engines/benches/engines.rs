//! One batch of each engine on the driving study (the simulated 2 mm dataset: N = 58
//! post - pre differences, interaction contrast, sign flips), repeated: the median and the
//! fastest time per batch. The whole-contrast timings, their ratios and effective GFLOP/s,
//! measured in one run, are `voxflip bench` (and `voxflip bench --tfce`).
//!
//! `cargo bench -p voxflip-engines`; the GPU engine joins when a hardware adapter exists
//! (any adapter, software included, with VOXFLIP_BENCH_SOFTWARE=1). Numbers are for the
//! README, never for pass/fail.

// A benchmark reports on the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]
use std::time::Instant;
use voxflip_engines::cpu::CpuEngine;
use voxflip_engines::gpu::{AdapterChoice, GpuEngine};
use voxflip_engines::{Engine, GpuOptions};
use voxflip_stats::{PermKind, PermSet};

const REPEATS: usize = 10;

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
    for engine in engines.iter_mut() {
        engine.prepare(problem).unwrap();
        let batch = engine.preferred_batch().min(perms.len());
        // Warm-up outside the measurement: shader compilation happens at first dispatch.
        engine.run_batch(&perms, 0..batch, Some(&observed), None).unwrap();
        let mut secs: Vec<f64> = (0..REPEATS)
            .map(|_| {
                let t = Instant::now();
                engine.run_batch(&perms, 0..batch, Some(&observed), None).unwrap();
                t.elapsed().as_secs_f64()
            })
            .collect();
        secs.sort_by(f64::total_cmp);
        let gflops = problem.flops_per_perm() * batch as f64 / secs[REPEATS / 2] / 1e9;
        println!(
            "{}: batch of {batch} sign flips, median {:.4} s (fastest {:.4} s) over {REPEATS}, {gflops:.1} GFLOP/s",
            engine.describe(),
            secs[REPEATS / 2],
            secs[0]
        );
    }
}
