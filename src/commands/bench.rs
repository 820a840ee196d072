//! `voxflip bench`: both engines on the driving study, timed in one run, so that ratios are
//! measured on one machine at one moment (these machines are shared and noisy: numbers are
//! for reports, never for pass/fail).
//!
//! The workload is the interaction contrast (tstat1) of the simulated 2 mm study: N = 58
//! post - pre differences, two group means in the model, ~228,000 in-brain voxels,
//! Freedman-Lane sign flips. For each engine, after a warm-up that compiles the shaders
//! (kept out of the timings):
//! - voxelwise: upload of the problem, the observed map and all permutations with their
//!   max-T null and exceedance counts, i.e. everything but file I/O, once with the matrix
//!   product and once with the table-driven product, and their ratio;
//! - with `--tfce`: the same with randomise's stepwise TFCE of every permutation map, and its
//!   ratio to the voxelwise run; and TFCE alone per map and per thread, today's algorithm
//!   against the reference it replaced, on one thread and on all, with the parallel
//!   efficiency.
//! - `--end-to-end`: `voxflip example` itself, as a user runs it, in a scratch folder, with
//!   the split of its wall time that its sidecar records.
//! - `--scaling`: the time per 1,000 sign flips against N and V (random problems), both
//!   products, each engine.
//!
//! Effective GFLOP/s count the matrix product's flops (2 q N V per permutation) whichever
//! path ran, so the table path can exceed the sgemm peak; built with `--features
//! sgemm-peak`, the machine's sgemm peak (gemm crate, 4096^3) is measured in the same run.
//! `--json` prints the same report as one JSON object.
use crate::cli::{BackendArg, BenchArgs};
use crate::error::{Error, Result};
use rayon::prelude::*;
use serde::Serialize;
use std::time::Instant;
use voxflip_engines::cpu::CpuEngine;
use voxflip_engines::gpu::{AdapterChoice, GpuEngine};
use voxflip_engines::scheduler::SPATIAL_BATCH;
use voxflip_engines::{Engine, Product, Scheduler, SpatialPlacement};
use voxflip_simulate::DrivingStudy;
use voxflip_stats::spatial::{
    tfce_step_from_observed, tfce_stepwise_into, tfce_stepwise_reference_into, MaskGraph, SpatialJob, TfceOptions,
    TfceParams, Workspace,
};
use voxflip_stats::{ContrastProblem, PermKind, PermSet, StatKind};

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

/// What one run of the benchmark measured.
#[derive(Serialize)]
struct BenchReport {
    study: Study,
    threads: usize,
    /// GFLOP/s; None without `--features sgemm-peak`.
    sgemm_peak_gflops: Option<f64>,
    engines: Vec<EngineReport>,
    tfce_per_map: Option<TfceReport>,
    end_to_end: Option<EndToEnd>,
    scaling: Vec<ScalingRow>,
}

#[derive(Serialize)]
struct Study {
    n: usize,
    v: usize,
    q: usize,
    build_seconds: f64,
}

#[derive(Serialize)]
struct EngineReport {
    engine: String,
    warm_up_seconds: f64,
    /// The voxelwise run, one entry per product.
    voxelwise: Vec<PathTiming>,
    /// Matrix-product seconds / table-product seconds.
    table_speedup: f64,
    tfce_run: Option<TfceRun>,
}

#[derive(Serialize)]
struct PathTiming {
    /// As `--product` names it.
    product: Product,
    permutations: usize,
    seconds: f64,
    permutations_per_second: f64,
    /// 2 q N V flops per permutation / seconds.
    effective_gflops: f64,
    /// effective / sgemm peak.
    of_sgemm_peak: Option<f64>,
    /// The glm_stat passes alone on the GPU (`--gpu-timestamps`).
    gpu_pass_seconds: Option<f64>,
}

#[derive(Serialize)]
struct TfceRun {
    permutations: usize,
    on_gpu: bool,
    seconds: f64,
    ms_per_permutation: f64,
    /// Seconds of the TFCE run / seconds of the voxelwise run of the same permutations.
    over_voxelwise: f64,
    maps_only_seconds: f64,
}

#[derive(Serialize)]
struct TfceReport {
    maps: usize,
    /// Stepwise TFCE (randomise's -T: H = 2, E = 0.5, 6-connectivity), the whole map.
    reference_ms_per_map_1_thread: f64,
    ms_per_map_1_thread: f64,
    /// Wall time per map on all threads, times the threads.
    ms_per_map_per_thread_all_threads: f64,
    /// reference / today's, one thread.
    speedup: f64,
    /// One-thread time / all-threads time.
    parallel_speedup: f64,
}

#[derive(Serialize)]
struct EndToEnd {
    command: String,
    wall_seconds: f64,
    /// From the run's sidecar.
    read_inputs: f64,
    setup: f64,
    contrasts: f64,
    outputs: f64,
    /// The rest of the wall time: simulating and writing the data, the report, start-up.
    other: f64,
    /// contrasts / wall.
    contrasts_share: f64,
}

#[derive(Serialize)]
struct ScalingRow {
    engine: String,
    product: Product,
    n: usize,
    v: usize,
    seconds_per_1000: f64,
}

/// Seconds for one whole contrast on the scheduler's engine (problem upload, observed map,
/// all permutations), with TFCE of every map when `tfce`; and whether the TFCE ran on the
/// GPU. The scheduler keeps its GPU spatial reducer across calls, so that device creation
/// and shader compilation fall into the warm-up.
fn time_contrast(s: &mut Scheduler, study: &DrivingStudy, perms: &PermSet, tfce: bool) -> Result<(f64, bool)> {
    let t = Instant::now();
    s.prepare(&study.problem)?;
    let observed = s.observed_map(&study.problem, perms.kind)?;
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

fn kernel_seconds(s: &Scheduler) -> Option<f64> {
    match s.engine() {
        Engine::Gpu(g) => g.kernel_seconds(),
        Engine::Cpu(_) => None,
    }
}

/// The product in the report's words (the JSON uses `--product`'s names).
fn product_name(p: Product) -> &'static str {
    match p {
        Product::Auto => "auto",
        Product::Gemm => "matrix",
        Product::Table => "table",
    }
}

/// The engines the flags ask for: the CPU engine, and a GPU engine where one opens.
fn schedulers(a: &BenchArgs, out: &mut Vec<String>) -> Vec<Scheduler> {
    let mut schedulers = vec![Scheduler::new(Engine::Cpu(CpuEngine::new()), SpatialPlacement::Auto)];
    if a.backend != BackendArg::Cpu {
        let choice = AdapterChoice { name: a.adapter.clone(), allow_software: a.backend == BackendArg::Gpu };
        let gpu = a.gpu.options(a.adapter.clone());
        match GpuEngine::new(&choice, &gpu) {
            Ok(g) => schedulers.push(Scheduler::new(Engine::Gpu(Box::new(g)), gpu.spatial)),
            Err(e) => out.push(format!("gpu engine: not available ({e})")),
        }
    }
    schedulers
}

/// Run the benchmark and print its report on stdout (text, or JSON with `--json`).
pub fn run(a: &BenchArgs) -> Result<()> {
    let mut text = Vec::new();
    let report = measure(a, &mut text)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| Error::usage(e.to_string()))?);
    } else {
        for line in text {
            println!("{line}");
        }
    }
    Ok(())
}

fn measure(a: &BenchArgs, out: &mut Vec<String>) -> Result<BenchReport> {
    let (nperm, tfce, tfce_perms) = (a.n_perm, a.tfce, a.tfce_perms.unwrap_or(a.n_perm));
    let t = Instant::now();
    let study = voxflip_simulate::driving_study();
    let p = &study.problem;
    let build_seconds = t.elapsed().as_secs_f64();
    out.push(format!(
        "driving study (simulated 2 mm, interaction): N = {}, V = {}, q = {} (built in {build_seconds:.1} s)",
        p.n, p.v, p.q
    ));
    let perms = sign_flips(p.n, nperm, 1)?;
    let tperms = sign_flips(p.n, tfce_perms, 1)?;
    let flops = p.flops_per_perm() * perms.len() as f64;
    let threads = rayon::current_num_threads();
    let peak = sgemm_peak_gflops(4096, 3);
    match peak {
        Some(peak) => out.push(format!("sgemm peak (gemm crate, 4096^3, {threads} threads): {peak:.1} GFLOP/s")),
        None => out.push("sgemm peak: not measured (build with --features sgemm-peak to compare against it)".into()),
    }

    let mut engines = Vec::new();
    let mut voxelwise = Vec::new();
    for s in schedulers(a, out).iter_mut() {
        // Warm-up: shader compilation and first-touch allocations stay out of the timings.
        let warm = sign_flips(p.n, 8, 2)?;
        let tw = Instant::now();
        time_contrast(s, &study, &warm, tfce)?;
        let warm_up_seconds = tw.elapsed().as_secs_f64();
        out.push(s.describe());
        let mut paths = Vec::new();
        for product in [Product::Gemm, Product::Table] {
            s.engine_mut().set_product(product);
            let k0 = kernel_seconds(s);
            let (secs, _) = time_contrast(s, &study, &perms, false)?;
            let gpu_pass_seconds = kernel_seconds(s).zip(k0).map(|(a, b)| a - b);
            let gf = flops / secs / 1e9;
            let of_peak = peak.map(|peak| gf / peak);
            out.push(format!(
                "  voxelwise, {} product: {} sign flips in {secs:.3} s ({:.0} permutations/s), {gf:.1} GFLOP/s effective{}",
                product_name(product),
                perms.len(),
                perms.len() as f64 / secs,
                of_peak.map(|r| format!(" = {:.0}% of the sgemm peak", 100.0 * r)).unwrap_or_default()
            ));
            if let Some(k) = gpu_pass_seconds {
                out.push(format!("    glm_stat passes alone: {k:.4} s on the GPU, {:.1} GFLOP/s", flops / k / 1e9));
            }
            paths.push(PathTiming {
                product,
                permutations: perms.len(),
                seconds: secs,
                permutations_per_second: perms.len() as f64 / secs,
                effective_gflops: gf,
                of_sgemm_peak: of_peak,
                gpu_pass_seconds,
            });
        }
        s.engine_mut().set_product(Product::Auto);
        let table_speedup = paths[0].seconds / paths[1].seconds;
        out.push(format!(
            "  table product / matrix product speed: {table_speedup:.2}x (warm-up {warm_up_seconds:.2} s)"
        ));
        let secs = paths[1].seconds;
        let tfce_run = if tfce { Some(tfce_run(s, &study, &tperms, &perms, secs, a, out)?) } else { None };
        voxelwise.push(secs);
        engines.push(EngineReport { engine: s.describe(), warm_up_seconds, voxelwise: paths, table_speedup, tfce_run });
    }
    if voxelwise.len() == 2 {
        out.push(format!(
            "GPU/CPU time ratio (voxelwise, default product): {:.3} (GPU speed = {:.2}x the CPU engine's)",
            voxelwise[1] / voxelwise[0],
            voxelwise[0] / voxelwise[1]
        ));
    }
    let tfce_per_map = if tfce { Some(tfce_per_map(&study, out)?) } else { None };
    let end_to_end = if a.end_to_end { Some(end_to_end(tfce, out)?) } else { None };
    let scaling = if a.scaling { scaling(a, out)? } else { Vec::new() };
    Ok(BenchReport {
        study: Study { n: p.n, v: p.v, q: p.q, build_seconds },
        threads,
        sgemm_peak_gflops: peak,
        engines,
        tfce_per_map,
        end_to_end,
        scaling,
    })
}

/// The TFCE run of one engine: maps only, then TFCE of every map (and, when it ran on the
/// GPU, the same on the CPU), against the voxelwise run.
fn tfce_run(
    s: &mut Scheduler,
    study: &DrivingStudy,
    tperms: &PermSet,
    perms: &PermSet,
    voxelwise_secs: f64,
    a: &BenchArgs,
    out: &mut Vec<String>,
) -> Result<TfceRun> {
    let p = &study.problem;
    // The maps alone: computed and brought to the host in the batches the spatial
    // statistics use, without reducing them (what the engine adds to TFCE).
    s.prepare(p)?;
    let mut maps = vec![0f32; SPATIAL_BATCH * p.v];
    let tm = Instant::now();
    let mut done = 0;
    while done < tperms.len() {
        let b = SPATIAL_BATCH.min(tperms.len() - done);
        s.engine_mut().run_batch(tperms, done..done + b, None, Some(&mut maps[..b * p.v]))?;
        done += b;
    }
    let tm = tm.elapsed().as_secs_f64();
    out.push(format!(
        "  maps only: {} maps computed and delivered to the host in {tm:.2} s ({:.2} GB/s)",
        tperms.len(),
        (tperms.len() * p.v * 4) as f64 / tm / 1e9
    ));
    let (ts, on_gpu) = time_contrast(s, study, tperms, true)?;
    let tv = if tperms.len() == perms.len() { voxelwise_secs } else { time_contrast(s, study, tperms, false)?.0 };
    if on_gpu {
        s.set_placement(SpatialPlacement::Cpu);
        let (tc, _) = time_contrast(s, study, tperms, true)?;
        s.set_placement(a.gpu.options(None).spatial);
        out.push(format!(
            "  TFCE on the CPU ({} threads) from this engine's maps: {} sign flips in {tc:.2} s ({:.2} ms per permutation)",
            rayon::current_num_threads(),
            tperms.len(),
            1e3 * tc / tperms.len() as f64
        ));
    }
    let place = if on_gpu { "TFCE on the GPU" } else { "TFCE on the CPU" };
    out.push(format!(
        "  {place} (H=2, E=0.5, C=6, stepwise): {} sign flips in {ts:.2} s ({:.1} ms per permutation); {:.1}x the voxelwise-only run ({tv:.3} s)",
        tperms.len(),
        1e3 * ts / tperms.len() as f64,
        ts / tv
    ));
    Ok(TfceRun {
        permutations: tperms.len(),
        on_gpu,
        seconds: ts,
        ms_per_permutation: 1e3 * ts / tperms.len() as f64,
        over_voxelwise: ts / tv,
        maps_only_seconds: tm,
    })
}

/// Stepwise TFCE alone on one batch of the study's null maps: the reference algorithm and
/// today's on one thread, today's on all threads.
fn tfce_per_map(study: &DrivingStudy, out: &mut Vec<String>) -> Result<TfceReport> {
    let p = &study.problem;
    let mut eng = CpuEngine::new();
    eng.prepare(p)?;
    let perms = sign_flips(p.n, SPATIAL_BATCH, 5)?;
    let m = perms.len();
    let mut maps = vec![0f32; m * p.v];
    eng.run_batch(&perms, 0..m, None, Some(&mut maps))?;
    // randomise's step: the observed (identity) map's maximum / 100.
    let dh = tfce_step_from_observed(&maps[..p.v]);
    let params = TfceParams::default();
    let g = &study.graph;
    type Tfce = fn(
        &MaskGraph,
        &[f32],
        &TfceParams,
        f32,
        &mut Workspace,
        &mut [f32],
    ) -> std::result::Result<(), voxflip_stats::spatial::TooManyLevels>;
    let one_thread = |f: Tfce| -> Result<f64> {
        let mut ws = Workspace::default();
        let mut o = vec![0f32; p.v];
        f(g, &maps[..p.v], &params, dh, &mut ws, &mut o).map_err(|e| Error::usage(e.to_string()))?;
        let t = Instant::now();
        for map in maps.chunks_exact(p.v) {
            f(g, map, &params, dh, &mut ws, &mut o).map_err(|e| Error::usage(e.to_string()))?;
        }
        Ok(t.elapsed().as_secs_f64())
    };
    let reference = one_thread(tfce_stepwise_reference_into)?;
    let today = one_thread(tfce_stepwise_into)?;
    let threads = rayon::current_num_threads();
    let t = Instant::now();
    maps.par_chunks_exact(p.v).try_for_each_init(
        || (Workspace::default(), vec![0f32; p.v]),
        |(ws, o), map| tfce_stepwise_into(g, map, &params, dh, ws, o).map_err(|e| Error::usage(e.to_string())),
    )?;
    let all = t.elapsed().as_secs_f64();
    let ms = |s: f64| 1e3 * s / m as f64;
    let report = TfceReport {
        maps: m,
        reference_ms_per_map_1_thread: ms(reference),
        ms_per_map_1_thread: ms(today),
        ms_per_map_per_thread_all_threads: ms(all) * threads as f64,
        speedup: reference / today,
        parallel_speedup: today / all,
    };
    out.push(format!(
        "TFCE alone (stepwise, H=2, E=0.5, C=6, {m} null maps of the study): {:.2} ms per map on one thread \
         (the reference algorithm: {:.2} ms, {:.2}x); on {threads} threads {:.2} ms per map per thread, {:.2}x one thread",
        report.ms_per_map_1_thread,
        report.reference_ms_per_map_1_thread,
        report.speedup,
        report.ms_per_map_per_thread_all_threads,
        report.parallel_speedup
    ));
    Ok(report)
}

/// `voxflip example` as a user runs it, in a scratch folder, timed, with its sidecar's split.
fn end_to_end(tfce: bool, out: &mut Vec<String>) -> Result<EndToEnd> {
    let dir = std::env::temp_dir().join(format!("voxflip-bench-{}", std::process::id()));
    let exe = std::env::current_exe().map_err(|e| Error::usage(format!("voxflip bench: {e}")))?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("example").arg("--dir").arg(&dir).arg("--quiet").arg("--backend").arg("cpu");
    if tfce {
        cmd.arg("-T");
    }
    let command =
        format!("voxflip example --dir {} --quiet --backend cpu{}", dir.display(), if tfce { " -T" } else { "" });
    let t = Instant::now();
    let status = cmd.stdout(std::process::Stdio::null()).status();
    let wall = t.elapsed().as_secs_f64();
    let sidecar = std::fs::read_to_string(dir.join("results").join("interaction_voxflip.json"));
    let _ = std::fs::remove_dir_all(&dir);
    if !status.is_ok_and(|s| s.success()) {
        return Err(Error::usage(format!("voxflip bench --end-to-end: `{command}` failed")));
    }
    let sidecar: serde_json::Value = serde_json::from_str(&sidecar.map_err(|e| Error::usage(e.to_string()))?)
        .map_err(|e| Error::usage(e.to_string()))?;
    let field = |k: &str| sidecar["timings"][k].as_f64().unwrap_or(0.0);
    let (read_inputs, setup, contrasts, outputs) =
        (field("read_inputs"), field("setup"), field("contrasts"), field("outputs"));
    let other = (wall - read_inputs - setup - contrasts - outputs).max(0.0);
    let e = EndToEnd {
        command,
        wall_seconds: wall,
        read_inputs,
        setup,
        contrasts,
        outputs,
        other,
        contrasts_share: contrasts / wall,
    };
    out.push(format!(
        "end to end ({}): {wall:.1} s wall; reading {read_inputs:.2} s, set-up {setup:.2} s, contrasts (permutations, \
         spatial statistics, p-values) {contrasts:.2} s = {:.0}% of the wall, outputs {outputs:.2} s, \
         the rest (simulating and writing the data, the report) {other:.2} s",
        e.command,
        100.0 * e.contrasts_share
    ));
    Ok(e)
}

/// A random problem of N rows and V voxels (two-column model, t contrast): the cost of a
/// permutation depends on the sizes only.
fn random_problem(n: usize, v: usize) -> ContrastProblem {
    let q = 2;
    // splitmix64: uniform values in [-0.5, 0.5); any values do, the sizes set the cost.
    let mut state = (n * 31 + v) as u64;
    let mut uniform = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let e: Vec<f32> = (0..n * v).map(|_| uniform()).collect();
    let qbasis: Vec<f32> = (0..n * q).map(|_| uniform()).collect();
    let ss: Vec<f32> = (0..v).map(|x| (0..n).map(|i| e[i * v + x] * e[i * v + x]).sum::<f32>() * 2.0).collect();
    ContrastProblem { n, v, q, s: 1, kind: StatKind::T, dof: (n - q) as f32, qbasis, e, ss, voxel_qbasis: None }
}

/// Seconds per 1,000 sign flips against N (58, 500, 5,000) and V (the 4 mm and 2 mm brains'
/// voxel counts), each engine and product; fewer permutations where one costs more.
fn scaling(a: &BenchArgs, out: &mut Vec<String>) -> Result<Vec<ScalingRow>> {
    let mut rows = Vec::new();
    let mut schedulers = schedulers(a, out);
    out.push("scaling (seconds per 1,000 sign flips, voxelwise):".into());
    for &v in &[28_000usize, 228_000] {
        for &n in &[58usize, 500, 5000] {
            let problem = random_problem(n, v);
            // About 2e12 flops per measurement at most.
            let count = ((2e12 / problem.flops_per_perm()) as usize).clamp(50, 2000);
            let perms = sign_flips(n, count, 1)?;
            for s in schedulers.iter_mut() {
                for product in [Product::Gemm, Product::Table] {
                    s.engine_mut().set_product(product);
                    s.prepare(&problem)?;
                    let observed = s.observed_map(&problem, perms.kind)?;
                    let t = Instant::now();
                    s.permute(&problem, &perms, 0..perms.len(), &observed, None, &())?;
                    let secs = t.elapsed().as_secs_f64() * 1000.0 / perms.len() as f64;
                    out.push(format!(
                        "  N = {n:5}, V = {v:7}, {:30} {:6} product: {secs:8.3} s",
                        s.describe(),
                        product_name(product)
                    ));
                    rows.push(ScalingRow { engine: s.describe(), product, n, v, seconds_per_1000: secs });
                }
                s.engine_mut().set_product(Product::Auto);
            }
        }
    }
    Ok(rows)
}
