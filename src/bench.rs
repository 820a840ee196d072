//! `voxflip bench`: both engines on the driving study, timed in one run, so that ratios are
//! measured on one machine at one moment (these machines are shared and noisy: numbers
//! are for reports, never for pass/fail).
//!
//! The workload is the interaction contrast (tstat1) of the simulated 2 mm study: N = 58
//! post - pre differences, two group means in the model, ~228,000 in-brain voxels,
//! Freedman-Lane sign flips. For each engine it times, after a warm-up that compiles the
//! shaders (kept out of the timings):
//! - voxelwise: upload of the problem, the observed map and all permutations with their
//!   max-T null and exceedance counts, i.e. everything but file I/O;
//! - with `--tfce`: the same with randomise's stepwise TFCE of every permutation map (its
//!   null maxima and per-voxel counts), and its ratio to the voxelwise run.
//!
//! Effective GFLOP/s count the product only (2 q N V per permutation), against the machine's
//! sgemm peak (gemm crate, 4096^3) measured in the same run.
use crate::analysis::{gpu_spatial_for, observed_map, permute_contrast_with, SPATIAL_BATCH};
use crate::engine::cpu::CpuEngine;
use crate::engine::gpu::spatial::GpuSpatial;
use crate::engine::gpu::{AdapterChoice, GpuEngine};
use crate::engine::{ContrastProblem, Engine};
use crate::error::Result;
use crate::perm::{PermKind, PermSet};
use crate::spatial::{tfce_step_from_observed, MaskGraph, TfceParams, Workspace};
use crate::spatial_inference::{SpatialJob, TfceOptions};
use std::time::Instant;

/// The driving study's interaction problem and its mask graph (for TFCE).
pub struct DrivingStudy {
    pub problem: ContrastProblem,
    pub graph: MaskGraph,
}

/// Simulate the 2 mm study (default seed) and build the interaction problem (tstat1).
pub fn driving_study() -> DrivingStudy {
    let sim = crate::simulate::simulate(&crate::simulate::SimConfig::default());
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
    let design = crate::design::Design::group_by_time(&groups, &[first, other]);
    let model = crate::glm::ContrastModel::new(&design.m, &design.contrasts[0]).expect("interaction is estimable");
    let graph = MaskGraph::from_mask(sim.dims, &sim.mask, TfceParams::default().conn);
    DrivingStudy { problem: model.problem(&y, v), graph }
}

/// The machine's sgemm rate (gemm crate, n^3, all rayon threads, best of `reps`), GFLOP/s.
pub fn sgemm_peak_gflops(n: usize, reps: usize) -> f64 {
    let a = vec![1.0f32; n * n];
    let b = vec![0.5f32; n * n];
    let mut c = vec![0f32; n * n];
    let threads = rayon::current_num_threads();
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        // SAFETY: a, b, c are n x n, row-major with row stride n, as passed.
        unsafe {
            gemm::gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                n as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(threads),
            );
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (n as f64).powi(3) / best / 1e9
}

/// Seconds for one whole contrast on `engine` (problem upload, observed map, all
/// permutations), with TFCE of every map when `tfce`.
///
/// `gpu_spatial` holds the GPU spatial reducer across calls (opened by the first TFCE call
/// when the engine runs spatial statistics on its device), so that device creation and
/// shader compilation fall into the warm-up; None keeps the spatial statistics on the CPU.
pub fn time_contrast(
    engine: &mut Box<dyn Engine>,
    study: &DrivingStudy,
    perms: &PermSet,
    tfce: bool,
    gpu_spatial: Option<&mut Option<GpuSpatial>>,
) -> Result<f64> {
    let hidden = indicatif::ProgressBar::hidden();
    let t = Instant::now();
    engine.prepare(&study.problem)?;
    let observed = observed_map(engine, &study.problem)?;
    let opts = TfceOptions { params: TfceParams::default(), exact: false, step: None };
    let dh = tfce_step_from_observed(&observed);
    let mut tfce_obs = vec![0f32; study.problem.v];
    let mut job = SpatialJob { tfce: None, tfce_observed: None, cluster_graph: None, extent_thr: None, mass_thr: None };
    if tfce {
        job.tfce = Some((&study.graph, opts, dh));
        job.tfce_map(&observed, &mut Workspace::new(), &mut tfce_obs);
        job.tfce_observed = Some(&tfce_obs);
    }
    let mut gs = None;
    if let (Some(slot), true) = (gpu_spatial, tfce) {
        if gpu_spatial_for(&mut **engine, &job, slot, true).is_some() {
            gs = slot.as_mut();
        }
    }
    permute_contrast_with(engine, &study.problem, perms, &observed, tfce.then_some(&job), gs, &hidden)?;
    Ok(t.elapsed().as_secs_f64())
}

/// Run the benchmark and print its report on stdout.
pub fn run(nperm: usize, tfce: bool, tfce_perms: usize, gpu: Option<AdapterChoice>) -> Result<()> {
    let t = Instant::now();
    let study = driving_study();
    let p = &study.problem;
    println!(
        "driving study (simulated 2 mm, interaction): N = {}, V = {}, q = {} (built in {:.1} s)",
        p.n,
        p.v,
        p.q,
        t.elapsed().as_secs_f64()
    );
    let perms = PermSet::generate(p.n, PermKind::SignFlip, &vec![0; p.n], nperm, 1).map_err(crate::Error::usage)?;
    let tperms = PermSet::generate(p.n, PermKind::SignFlip, &vec![0; p.n], tfce_perms, 1).map_err(crate::Error::usage)?;
    let flops = p.flops_per_perm() * perms.len() as f64;
    let peak = sgemm_peak_gflops(4096, 3);
    println!("sgemm peak (gemm crate, 4096^3, {} threads): {peak:.1} GFLOP/s", rayon::current_num_threads());

    let mut engines: Vec<Box<dyn Engine>> = vec![Box::new(CpuEngine::new())];
    if let Some(choice) = gpu {
        match GpuEngine::new(&choice) {
            Ok(g) => engines.push(Box::new(g)),
            Err(e) => println!("gpu engine: not available ({e})"),
        }
    }
    let mut voxelwise = Vec::new();
    for engine in engines.iter_mut() {
        let mut gs = None;
        // Warm-up: shader compilation and first-touch allocations stay out of the timings.
        let warm = PermSet::generate(p.n, PermKind::SignFlip, &vec![0; p.n], 8, 2).map_err(crate::Error::usage)?;
        let tw = Instant::now();
        time_contrast(engine, &study, &warm, tfce, Some(&mut gs))?;
        let warm_s = tw.elapsed().as_secs_f64();
        let k0 = engine.as_gpu().and_then(|g| g.kernel_seconds());
        let s = time_contrast(engine, &study, &perms, false, Some(&mut gs))?;
        let kernel = engine.as_gpu().and_then(|g| g.kernel_seconds()).zip(k0).map(|(a, b)| a - b);
        let gf = flops / s / 1e9;
        println!("{}", engine.describe());
        println!(
            "  voxelwise: {} sign flips in {s:.3} s ({:.0} permutations/s), {gf:.1} GFLOP/s effective = {:.0}% of the sgemm peak (warm-up {warm_s:.2} s)",
            perms.len(),
            perms.len() as f64 / s,
            100.0 * gf / peak
        );
        if let Some(k) = kernel {
            // VOXFLIP_GPU_TIMESTAMPS=1: the glm_stat passes' own time on the GPU.
            println!("  glm_stat passes alone: {k:.4} s on the GPU, {:.1} GFLOP/s", flops / k / 1e9);
        }
        if tfce {
            // The maps alone: computed and brought to the host in the batches the spatial
            // statistics use, without reducing them (what the engine adds to TFCE).
            engine.prepare(p)?;
            let mut maps = vec![0f32; SPATIAL_BATCH * p.v];
            let tm = Instant::now();
            let mut done = 0;
            while done < tperms.len() {
                let b = SPATIAL_BATCH.min(tperms.len() - done);
                engine.run_batch(&tperms, done..done + b, None, Some(&mut maps[..b * p.v]))?;
                done += b;
            }
            let tm = tm.elapsed().as_secs_f64();
            println!(
                "  maps only: {} maps computed and delivered to the host in {tm:.2} s ({:.2} GB/s)",
                tperms.len(),
                (tperms.len() * p.v * 4) as f64 / tm / 1e9
            );
            let ts = time_contrast(engine, &study, &tperms, true, Some(&mut gs))?;
            let tv = if tperms.len() == perms.len() { s } else { time_contrast(engine, &study, &tperms, false, Some(&mut gs))? };
            if engine.spatial_adapter().is_some() {
                let tc = time_contrast(engine, &study, &tperms, true, None)?;
                println!(
                    "  TFCE on the CPU ({} threads) from this engine's maps: {} sign flips in {tc:.2} s ({:.2} ms per permutation)",
                    rayon::current_num_threads(),
                    tperms.len(),
                    1e3 * tc / tperms.len() as f64
                );
            }
            let place = match engine.spatial_adapter() {
                Some(_) => "TFCE on the GPU",
                None => "TFCE on the CPU",
            };
            println!(
                "  {place} (H=2, E=0.5, C=6, stepwise): {} sign flips in {ts:.2} s ({:.1} ms per permutation); {:.1}x the voxelwise-only run ({tv:.3} s)",
                tperms.len(),
                1e3 * ts / tperms.len() as f64,
                ts / tv
            );
        }
        voxelwise.push(s);
    }
    if voxelwise.len() == 2 {
        println!(
            "GPU/CPU time ratio (voxelwise): {:.3} (GPU speed = {:.2}x the CPU engine's)",
            voxelwise[1] / voxelwise[0],
            voxelwise[0] / voxelwise[1]
        );
    }
    Ok(())
}
