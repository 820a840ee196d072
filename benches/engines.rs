//! Engines on the driving study: the simulated 2 mm dataset (N = 58 post - pre
//! differences, interaction contrast, sign flips), in one run:
//! - the machine's sgemm peak (gemm crate, 2048^3, best of 5) as the yardstick,
//! - the CPU engine: time for VOXFLIP_BENCH_PERMS sign flips (default 5,000), effective
//!   GFLOP/s (2 q N V per permutation) and its fraction of the sgemm peak,
//! - the GPU engine when an adapter exists (lavapipe only with VOXFLIP_BENCH_SOFTWARE=1),
//!   and the GPU/CPU time ratio,
//! then criterion's statistics for one batch of each engine.
//!
//! `cargo bench --bench engines`. Numbers are for the README, never for pass/fail.
use criterion::Criterion;
use std::time::Instant;
use voxflip::engine::cpu::CpuEngine;
use voxflip::engine::{ContrastProblem, Engine};
use voxflip::perm::{PermKind, PermSet};

fn sgemm_peak_gflops() -> f64 {
    let n = 2048;
    let a = vec![1.0f32; n * n];
    let b = vec![0.5f32; n * n];
    let mut c = vec![0f32; n * n];
    let threads = rayon::current_num_threads();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        unsafe {
            gemm::gemm(
                n, n, n, c.as_mut_ptr(), 1, n as isize, false, a.as_ptr(), 1, n as isize, b.as_ptr(), 1, n as isize,
                0.0f32, 1.0f32, false, false, false, gemm::Parallelism::Rayon(threads),
            );
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (n as f64).powi(3) / best / 1e9
}

/// The interaction problem (tstat1) of the simulated 2 mm study.
pub fn driving_problem() -> ContrastProblem {
    let sim = voxflip::simulate::simulate(&voxflip::simulate::SimConfig::default());
    let nvox = sim.dims[0] * sim.dims[1] * sim.dims[2];
    let voxels: Vec<usize> = (0..nvox).filter(|&l| sim.mask[l]).collect();
    let n = sim.ids.len();
    let v = voxels.len();
    let mut y = vec![0f32; n * v];
    for i in 0..n {
        for (k, &l) in voxels.iter().enumerate() {
            y[i * v + k] = sim.post[i * nvox + l] - sim.pre[i * nvox + l];
        }
    }
    let first = sim.groups[0].clone();
    let groups: Vec<usize> = sim.groups.iter().map(|g| (g != &first) as usize).collect();
    let other = sim.groups.iter().find(|g| **g != first).cloned().unwrap_or_default();
    let design = voxflip::design::Design::group_by_time(&groups, &[first, other]);
    let model = voxflip::glm::ContrastModel::new(&design.m, &design.contrasts[0]).unwrap();
    model.problem(&y, v)
}

fn time_engine(engine: &mut dyn Engine, problem: &ContrastProblem, perms: &PermSet) -> f64 {
    engine.prepare(problem).unwrap();
    let mut observed = vec![0f32; problem.v];
    // Warm-up (shader compilation on GPUs) stays out of the timing.
    engine.run_batch(perms, 0..1, None, Some(&mut observed)).unwrap();
    let t = Instant::now();
    let mut done = 0;
    while done < perms.len() {
        let b = engine.preferred_batch().min(perms.len() - done);
        engine.run_batch(perms, done..done + b, Some(&observed), None).unwrap();
        done += b;
    }
    t.elapsed().as_secs_f64()
}

fn main() {
    let nperm: usize = std::env::var("VOXFLIP_BENCH_PERMS").ok().and_then(|s| s.parse().ok()).unwrap_or(5000);
    let t = Instant::now();
    let problem = driving_problem();
    eprintln!("simulated 2 mm study: N = {}, V = {}, q = {} ({:.1} s)", problem.n, problem.v, problem.q, t.elapsed().as_secs_f64());
    let perms = PermSet::generate(problem.n, PermKind::SignFlip, &vec![0; problem.n], nperm, 1).unwrap();
    let flops = problem.flops_per_perm() * nperm as f64;

    let peak = sgemm_peak_gflops();
    println!("sgemm peak (gemm crate, 2048^3, {} threads): {peak:.1} GFLOP/s", rayon::current_num_threads());
    let mut cpu = CpuEngine::new();
    let cpu_s = (0..2).map(|_| time_engine(&mut cpu, &problem, &perms)).fold(f64::MAX, f64::min);
    let cpu_gf = flops / cpu_s / 1e9;
    println!(
        "cpu engine ({}): {nperm} sign flips in {cpu_s:.3} s, {cpu_gf:.1} GFLOP/s = {:.0}% of sgemm peak",
        cpu.describe(),
        100.0 * cpu_gf / peak
    );
    if let Some(mut gpu) = voxflip::engine::bench_gpu_engine() {
        let gpu_s = time_engine(gpu.as_mut(), &problem, &perms);
        println!(
            "gpu engine ({}): {nperm} sign flips in {gpu_s:.3} s, {:.1} GFLOP/s; GPU/CPU time ratio {:.3}",
            gpu.describe(),
            flops / gpu_s / 1e9,
            gpu_s / cpu_s
        );
    } else {
        println!("gpu engine: no adapter (lavapipe is used only with VOXFLIP_BENCH_SOFTWARE=1)");
    }

    // criterion's view of one batch per engine.
    let mut c = Criterion::default().sample_size(10).configure_from_args();
    let batch = cpu.preferred_batch();
    cpu.prepare(&problem).unwrap();
    let observed = vec![1.0f32; problem.v];
    c.bench_function(&format!("cpu_batch_{batch}_signflips_2mm"), |b| {
        b.iter(|| cpu.run_batch(&perms, 0..batch, Some(&observed), None).unwrap())
    });
    c.final_summary();
}
