//! `voxflip bench`: both engines on the driving study, timed in one run, so that ratios are
//! measured on one machine at one moment (these machines are shared and noisy: numbers are
//! for reports, never for pass/fail).
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
//! Effective GFLOP/s count the product only (2 q N V per permutation); built with
//! `--features sgemm-peak`, against the machine's sgemm peak (gemm crate, 4096^3) measured
//! in the same run.
use crate::cli::{BackendArg, BenchArgs};
use crate::error::{Error, Result};
use std::time::Instant;
use voxflip_engines::cpu::CpuEngine;
use voxflip_engines::gpu::{AdapterChoice, GpuEngine};
use voxflip_engines::scheduler::SPATIAL_BATCH;
use voxflip_engines::{Engine, Product, Scheduler, SpatialPlacement};
use voxflip_simulate::DrivingStudy;
use voxflip_stats::spatial::{tfce_step_from_observed, SpatialJob, TfceOptions, TfceParams};
use voxflip_stats::{PermKind, PermSet};

/// The machine's sgemm rate (gemm crate, n^3, all rayon threads, best of `reps`), GFLOP/s.
#[cfg(feature = "sgemm-peak")]
fn sgemm_peak_gflops(n: usize, reps: usize) -> Option<f64> {
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
    Some(2.0 * (n as f64).powi(3) / best / 1e9)
}

#[cfg(not(feature = "sgemm-peak"))]
fn sgemm_peak_gflops(_n: usize, _reps: usize) -> Option<f64> {
    None
}

/// Seconds for one whole contrast on the scheduler's engine (problem upload, observed map,
/// all permutations), with TFCE of every map when `tfce`; and whether the TFCE ran on the
/// GPU. The scheduler keeps its GPU spatial reducer across calls, so that device creation
/// and shader compilation fall into the warm-up.
fn time_contrast(s: &mut Scheduler, study: &DrivingStudy, perms: &PermSet, tfce: bool) -> Result<(f64, bool)> {
    let t = Instant::now();
    s.prepare(&study.problem)?;
    let observed = s.observed_map(&study.problem)?;
    let opts = TfceOptions { params: TfceParams::default(), exact: false, step: None };
    let mut job = SpatialJob { tfce: None, tfce_observed: None, cluster_graph: None, extent_thr: None, mass_thr: None };
    let mut on_gpu = false;
    let tfce_obs;
    if tfce {
        job.tfce = Some((&study.graph, opts, tfce_step_from_observed(&observed)));
        on_gpu = s.place_spatial(&job)?.is_some();
        tfce_obs = s.tfce_observed(&job, &observed)?;
        job.tfce_observed = Some(&tfce_obs);
    }
    s.permute(&study.problem, perms, 0..perms.len(), &observed, tfce.then_some(&job), &())?;
    Ok((t.elapsed().as_secs_f64(), on_gpu))
}

fn sign_flips(n: usize, count: usize, seed: u64) -> Result<PermSet> {
    PermSet::generate(n, PermKind::SignFlip, &vec![0; n], count, seed).map_err(Error::usage)
}

fn product_name(p: Product) -> &'static str {
    match p {
        Product::Auto => "auto",
        Product::Gemm => "matrix",
        Product::Table => "table",
    }
}

fn kernel_seconds(s: &Scheduler) -> Option<f64> {
    match s.engine() {
        Engine::Gpu(g) => g.kernel_seconds(),
        Engine::Cpu(_) => None,
    }
}

/// Run the benchmark and print its report on stdout.
pub fn run(a: &BenchArgs) -> Result<()> {
    let (nperm, tfce, tfce_perms) = (a.n_perm, a.tfce, a.tfce_perms.unwrap_or(a.n_perm));
    let t = Instant::now();
    let study = voxflip_simulate::driving_study();
    let p = &study.problem;
    println!(
        "driving study (simulated 2 mm, interaction): N = {}, V = {}, q = {} (built in {:.1} s)",
        p.n,
        p.v,
        p.q,
        t.elapsed().as_secs_f64()
    );
    let perms = sign_flips(p.n, nperm, 1)?;
    let tperms = sign_flips(p.n, tfce_perms, 1)?;
    let flops = p.flops_per_perm() * perms.len() as f64;
    let peak = sgemm_peak_gflops(4096, 3);
    match peak {
        Some(peak) => {
            println!("sgemm peak (gemm crate, 4096^3, {} threads): {peak:.1} GFLOP/s", rayon::current_num_threads())
        }
        None => println!("sgemm peak: not measured (build with --features sgemm-peak to compare against it)"),
    }

    let mut schedulers = vec![Scheduler::new(Engine::Cpu(CpuEngine::new()), SpatialPlacement::Auto)];
    if a.backend != BackendArg::Cpu {
        let choice = AdapterChoice { name: a.adapter.clone(), allow_software: a.backend == BackendArg::Gpu };
        let gpu = a.gpu.options(a.adapter.clone());
        match GpuEngine::new(&choice, &gpu) {
            Ok(g) => schedulers.push(Scheduler::new(Engine::Gpu(Box::new(g)), gpu.spatial)),
            Err(e) => println!("gpu engine: not available ({e})"),
        }
    }
    let mut voxelwise = Vec::new();
    for s in schedulers.iter_mut() {
        // Warm-up: shader compilation and first-touch allocations stay out of the timings.
        let warm = sign_flips(p.n, 8, 2)?;
        let tw = Instant::now();
        time_contrast(s, &study, &warm, tfce)?;
        let warm_s = tw.elapsed().as_secs_f64();
        let mut by_path = Vec::new();
        for product in [Product::Gemm, Product::Table] {
            s.engine_mut().set_product(product);
            let k0 = kernel_seconds(s);
            let (secs, _) = time_contrast(s, &study, &perms, false)?;
            let kernel = kernel_seconds(s).zip(k0).map(|(a, b)| a - b);
            let gf = flops / secs / 1e9;
            let of_peak = peak.map(|peak| format!(" = {:.0}% of the sgemm peak", 100.0 * gf / peak)).unwrap_or_default();
            by_path.push((product, secs, kernel));
            println!(
                "  voxelwise, {} product: {} sign flips in {secs:.3} s ({:.0} permutations/s), {gf:.1} GFLOP/s effective{of_peak}",
                product_name(product),
                perms.len(),
                perms.len() as f64 / secs,
            );
        }
        s.engine_mut().set_product(Product::Auto);
        let (secs, kernel) = (by_path[0].1, by_path[0].2);
        println!("  table / matrix product speed: {:.2}x (warm-up {warm_s:.2} s)", by_path[0].1 / by_path[1].1);
        if let Some(k) = kernel {
            // --gpu-timestamps: the glm_stat passes' own time on the GPU.
            println!("  glm_stat passes alone: {k:.4} s on the GPU, {:.1} GFLOP/s", flops / k / 1e9);
        }
        if tfce {
            // The maps alone: computed and brought to the host in the batches the spatial
            // statistics use, without reducing them (what the engine adds to TFCE).
            s.prepare(p)?;
            let mut maps = vec![0f32; SPATIAL_BATCH * p.v];
            let tm = Instant::now();
            let mut done = 0;
            while done < tperms.len() {
                let b = SPATIAL_BATCH.min(tperms.len() - done);
                s.engine_mut().run_batch(&tperms, done..done + b, None, Some(&mut maps[..b * p.v]))?;
                done += b;
            }
            let tm = tm.elapsed().as_secs_f64();
            println!(
                "  maps only: {} maps computed and delivered to the host in {tm:.2} s ({:.2} GB/s)",
                tperms.len(),
                (tperms.len() * p.v * 4) as f64 / tm / 1e9
            );
            let (ts, on_gpu) = time_contrast(s, &study, &tperms, true)?;
            let tv = if tperms.len() == perms.len() { secs } else { time_contrast(s, &study, &tperms, false)?.0 };
            if on_gpu {
                let placement = SpatialPlacement::Cpu;
                s.set_placement(placement);
                let (tc, _) = time_contrast(s, &study, &tperms, true)?;
                s.set_placement(a.gpu.options(None).spatial);
                println!(
                    "  TFCE on the CPU ({} threads) from this engine's maps: {} sign flips in {tc:.2} s ({:.2} ms per permutation)",
                    rayon::current_num_threads(),
                    tperms.len(),
                    1e3 * tc / tperms.len() as f64
                );
            }
            let place = if on_gpu { "TFCE on the GPU" } else { "TFCE on the CPU" };
            println!(
                "  {place} (H=2, E=0.5, C=6, stepwise): {} sign flips in {ts:.2} s ({:.1} ms per permutation); {:.1}x the voxelwise-only run ({tv:.3} s)",
                tperms.len(),
                1e3 * ts / tperms.len() as f64,
                ts / tv
            );
        }
        voxelwise.push(secs);
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
