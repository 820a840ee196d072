//! A GPU that fails mid-run (device lost, out of memory) must not change the answer: the
//! scheduler reports it, switches to the CPU engine and reruns the failed batch there, so
//! the null distribution and the exceedance counts are exactly those of the batches the GPU
//! finished followed by the CPU's for the rest (each batch's result depends on that batch
//! alone), and nothing of the failed batch is kept.
//!
//! The failure is injected into the real GPU engine (`GpuOptions::fail_at_batch`: at that
//! batch, counting from 1, the device is lost after scribbling NaN on the caller's maps, and
//! stays lost), on any adapter; skipped without one unless VOXFLIP_REQUIRE_GPU=1.
use crate::common::gpu_engine_with;
use voxflip_engines::cpu::CpuEngine;
use voxflip_engines::scheduler::{observed_map, permute_contrast};
use voxflip_engines::{Engine, GpuOptions, GpuTuning};
use voxflip_stats::spatial::{tfce_step_from_observed, Connectivity, MaskGraph, SpatialJob, SpatialNull, TfceOptions};
use voxflip_stats::spatial::{TfceParams, Workspace};
use voxflip_stats::{ContrastProblem, PermKind, PermSet};

/// Small, so the run has many batches and the failure lands mid-run.
const BATCH: usize = 7;

fn problem() -> ContrastProblem {
    // A one-sample problem: Q = 1/sqrt(n), E = Y - mean, from a fixed pseudo-random Y.
    let (n, v) = (12usize, 300usize);
    let mut y = vec![0f32; n * v];
    let mut s = 12345u64;
    for x in y.iter_mut() {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *x = ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.4;
    }
    let design = voxflip_stats::Design::one_sample(n);
    let model = voxflip_stats::ContrastModel::new(&design.m, &design.contrasts[0]).unwrap();
    model.problem(&y, v)
}

/// The GPU engine with batches of BATCH permutations, failing at batch `fail_at`.
fn flaky(what: &str, fail_at: usize) -> Option<Engine> {
    let opts = GpuOptions {
        tuning: GpuTuning { batch: Some(BATCH), ..Default::default() },
        fail_at_batch: Some(fail_at),
        ..Default::default()
    };
    gpu_engine_with(what, &opts).map(|g| Engine::Gpu(Box::new(g)))
}

/// Maxima, counts and maps of permutations `range` on `engine`, in batches of BATCH.
fn run_range(
    engine: &mut Engine,
    perms: &PermSet,
    range: std::ops::Range<usize>,
    obs: &[f32],
) -> (Vec<f32>, Vec<u32>, Vec<f32>) {
    let v = obs.len();
    let (mut null, mut counts, mut maps) = (Vec::new(), vec![0u32; v], vec![0f32; range.len() * v]);
    let mut at = range.start;
    while at < range.end {
        let end = (at + BATCH).min(range.end);
        let off = (at - range.start) * v;
        let r = engine.run_batch(perms, at..end, Some(obs), Some(&mut maps[off..off + (end - at) * v])).unwrap();
        null.extend(r.max_stat);
        for (c, x) in counts.iter_mut().zip(r.exceed) {
            *c += x;
        }
        at = end;
    }
    (null, counts, maps)
}

/// What a run must give: the observed map, the max-statistic null, the counts, the maps.
struct Expected {
    obs: Vec<f32>,
    null: Vec<f32>,
    counts: Vec<u32>,
    maps: Vec<f32>,
}

/// What a run that fails at call `fail_at` (the observed map is call 1) must give: the
/// observed map from the engine that computed it; the identity's member of the nulls from
/// the observed map itself (its maximum, an exceedance at every voxel: the scheduler forms
/// it on the host); the GPU's batches of the other permutations before the failure and the
/// CPU's from the failed batch on.
fn expected(pb: &ContrastProblem, perms: &PermSet, fail_at: usize) -> Option<Expected> {
    let mut gpu = flaky("fallback reference", usize::MAX)?;
    let mut cpu = Engine::Cpu(CpuEngine::new());
    gpu.prepare(pb).unwrap();
    cpu.prepare(pb).unwrap();
    let obs =
        if fail_at == 1 { observed_map(&mut cpu, pb, perms.kind) } else { observed_map(&mut gpu, pb, perms.kind) }
            .unwrap();
    let split = BATCH.saturating_mul(fail_at.saturating_sub(2)).saturating_add(1).min(perms.len());
    let mut null = vec![obs.iter().copied().fold(f32::NEG_INFINITY, f32::max)];
    let mut counts = vec![1u32; obs.len()];
    let mut maps = obs.clone();
    for (engine, range) in [(&mut gpu, 1..split), (&mut cpu, split..perms.len())] {
        let (n, c, m) = run_range(engine, perms, range, &obs);
        null.extend(n);
        maps.extend(m);
        for (a, b) in counts.iter_mut().zip(c) {
            *a += b;
        }
    }
    Some(Expected { obs, null, counts, maps })
}

#[test]
fn lost_device_continues_on_cpu_with_identical_results() {
    // The shared basis, and voxelwise regressors (glm_stat_voxelwise; the CPU engine's
    // per-voxel path after the failure).
    for pb in [problem(), crate::gpu_voxelwise::problem(12, 300, &[&[0.0, 0.0, 1.0]], 5)] {
        lost_device_case(&pb);
    }
}

fn lost_device_case(pb: &ContrastProblem) {
    let perms = PermSet::generate(pb.n, PermKind::SignFlip, &vec![0; pb.n], 100, 3).unwrap();
    for fail_at in [1, 2, 5, 15] {
        let Some(Expected { obs: obs_ref, null: null_ref, counts: counts_ref, .. }) = expected(pb, &perms, fail_at)
        else {
            return;
        };
        let mut engine = flaky(module_path!(), fail_at).unwrap();
        engine.prepare(pb).unwrap();
        let obs = observed_map(&mut engine, pb, perms.kind).unwrap();
        assert_eq!(obs, obs_ref, "fail at batch {fail_at}");
        let got = permute_contrast(&mut engine, pb, &perms, 0..perms.len(), &obs, None, None, &()).unwrap();
        assert_eq!(got.max_stat, null_ref, "fail at batch {fail_at}");
        assert_eq!(got.counts, counts_ref, "fail at batch {fail_at}");
        assert!(engine.describe().starts_with("cpu"), "the run must have switched engines");
    }
}

/// With spatial statistics, batch k's maps are reduced on a second thread while the engine
/// computes batch k + 1. The nulls must be exactly those of reducing every permutation's map
/// in order in one go, also when the engine is lost mid-run.
#[test]
fn overlapped_spatial_reduction_equals_one_sequential_pass() {
    let pb = problem();
    let perms = PermSet::generate(pb.n, PermKind::SignFlip, &vec![0; pb.n], 100, 5).unwrap();
    let dims = [10, 10, 3];
    let g6 = MaskGraph::from_mask(dims, &vec![true; pb.v], Connectivity::C6);
    let g26 = MaskGraph::from_mask(dims, &vec![true; pb.v], Connectivity::C26);
    let opts = TfceOptions { params: TfceParams::default(), exact: false, step: None };
    for fail_at in [usize::MAX, 4] {
        // Reference: every map (the GPU's before the failure, the CPU's after) at once.
        let Some(Expected { obs, maps: all, .. }) = expected(&pb, &perms, fail_at) else { return };
        let mut job = SpatialJob {
            tfce: Some((&g6, opts, tfce_step_from_observed(&obs))),
            tfce_observed: None,
            cluster_graph: Some(&g26),
            extent_thr: Some(0.5),
            mass_thr: Some(0.5),
        };
        let mut tfce_obs = vec![0f32; pb.v];
        job.tfce_map(&obs, &mut Workspace::new(), &mut tfce_obs).unwrap();
        job.tfce_observed = Some(&tfce_obs);
        let mut want = SpatialNull::default();
        job.reduce(&all, pb.v, &mut want).unwrap();
        assert_eq!(want.tfce_max.len(), 100);

        let mut engine = flaky(module_path!(), fail_at).unwrap();
        engine.prepare(&pb).unwrap();
        let obs2 = observed_map(&mut engine, &pb, perms.kind).unwrap();
        assert_eq!(obs2, obs);
        let got =
            permute_contrast(&mut engine, &pb, &perms, 0..perms.len(), &obs, Some(&job), None, &()).unwrap().spatial;
        assert_eq!(got.tfce_max, want.tfce_max, "fail at {fail_at}");
        assert_eq!(got.tfce_counts, want.tfce_counts, "fail at {fail_at}");
        assert_eq!(got.extent_max, want.extent_max, "fail at {fail_at}");
        assert_eq!(got.mass_max, want.mass_max, "fail at {fail_at}");
    }
}
