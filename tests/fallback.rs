//! A GPU that fails mid-run (device lost, out of memory) must not change the answer: the
//! pipeline reports it, switches to the CPU engine and reruns the failed batch there, so
//! the null distribution and the exceedance counts equal a clean CPU run exactly.
use std::ops::Range;
use voxflip::analysis::{observed_map, permute_contrast};
use voxflip::engine::cpu::CpuEngine;
use voxflip::engine::{BatchResult, ContrastProblem, Engine};
use voxflip::perm::{PermKind, PermSet};
use voxflip::Error;

/// The CPU engine in disguise that loses its "device" at its `fail_at`-th batch and stays
/// broken afterwards, as the GPU engine does.
struct FlakyEngine {
    inner: CpuEngine,
    batches: usize,
    fail_at: usize,
}

impl Engine for FlakyEngine {
    fn describe(&self) -> String {
        "flaky".into()
    }
    fn prepare(&mut self, problem: &ContrastProblem) -> voxflip::Result<()> {
        self.inner.prepare(problem)
    }
    fn preferred_batch(&self) -> usize {
        7 // small, so the run has many batches and the failure lands mid-run
    }
    fn run_batch(
        &mut self,
        perms: &PermSet,
        range: Range<usize>,
        observed: Option<&[f32]>,
        maps: Option<&mut [f32]>,
    ) -> voxflip::Result<BatchResult> {
        self.batches += 1;
        if self.batches >= self.fail_at {
            // Scribble on the outputs first, as a half-finished device batch might.
            if let Some(m) = maps {
                m.fill(f32::NAN);
            }
            return Err(Error::Gpu("device lost (simulated)".into()));
        }
        self.inner.run_batch(perms, range, observed, maps)
    }
}

fn problem() -> ContrastProblem {
    // A one-sample problem: Q = 1/sqrt(n), E = Y - mean, from a fixed pseudo-random Y.
    let (n, v) = (12usize, 300usize);
    let mut y = vec![0f32; n * v];
    let mut s = 12345u64;
    for x in y.iter_mut() {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *x = ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.4;
    }
    let design = voxflip::design::Design::one_sample(n);
    let model = voxflip::glm::ContrastModel::new(&design.m, &design.contrasts[0]).unwrap();
    model.problem(&y, v)
}

#[test]
fn lost_device_continues_on_cpu_with_identical_results() {
    let pb = problem();
    let perms = PermSet::generate(pb.n, PermKind::SignFlip, &vec![0; pb.n], 100, 3).unwrap();
    let hidden = indicatif::ProgressBar::hidden();

    let mut clean: Box<dyn Engine> = Box::new(CpuEngine::new());
    clean.prepare(&pb).unwrap();
    let obs = observed_map(&mut clean, &pb).unwrap();
    let (null_ref, counts_ref, _) = permute_contrast(&mut clean, &pb, &perms, &obs, None, &hidden).unwrap();

    for fail_at in [1, 2, 5, 15] {
        let mut flaky: Box<dyn Engine> = Box::new(FlakyEngine { inner: CpuEngine::new(), batches: 0, fail_at });
        flaky.prepare(&pb).unwrap();
        let obs2 = observed_map(&mut flaky, &pb).unwrap();
        assert_eq!(obs, obs2);
        let (null, counts, _) = permute_contrast(&mut flaky, &pb, &perms, &obs2, None, &hidden).unwrap();
        assert_eq!(null, null_ref, "fail at batch {fail_at}");
        assert_eq!(counts, counts_ref, "fail at batch {fail_at}");
        assert!(flaky.describe().starts_with("cpu"), "the run must have switched engines");
    }
}

/// With spatial statistics, batch k's maps are reduced on a second thread while the engine
/// computes batch k + 1. The nulls must be exactly those of reducing every permutation's map
/// in order in one go, also when the engine is lost mid-run.
#[test]
fn overlapped_spatial_reduction_equals_one_sequential_pass() {
    use voxflip::spatial::{tfce_step_from_observed, Connectivity, MaskGraph, TfceParams, Workspace};
    use voxflip::spatial_inference::{SpatialJob, SpatialNull, TfceOptions};
    let pb = problem();
    let perms = PermSet::generate(pb.n, PermKind::SignFlip, &vec![0; pb.n], 100, 5).unwrap();
    let hidden = indicatif::ProgressBar::hidden();
    let dims = [10, 10, 3];
    let g6 = MaskGraph::from_mask(dims, &vec![true; pb.v], Connectivity::C6);
    let g26 = MaskGraph::from_mask(dims, &vec![true; pb.v], Connectivity::C26);

    let mut cpu: Box<dyn Engine> = Box::new(CpuEngine::new());
    cpu.prepare(&pb).unwrap();
    let obs = observed_map(&mut cpu, &pb).unwrap();
    let opts = TfceOptions { params: TfceParams::default(), exact: false, step: None };
    let mut job = SpatialJob {
        tfce: Some((&g6, opts, tfce_step_from_observed(&obs))),
        tfce_observed: None,
        cluster_graph: Some(&g26),
        extent_thr: Some(0.5),
        mass_thr: Some(0.5),
    };
    let mut tfce_obs = vec![0f32; pb.v];
    job.tfce_map(&obs, &mut Workspace::new(), &mut tfce_obs);
    job.tfce_observed = Some(&tfce_obs);

    // Reference: every map at once, one reduction.
    let mut all = vec![0f32; perms.len() * pb.v];
    cpu.run_batch(&perms, 0..perms.len(), None, Some(&mut all)).unwrap();
    let mut want = SpatialNull::default();
    job.reduce(&all, pb.v, &mut want);
    assert_eq!(want.tfce_max.len(), 100);

    for fail_at in [usize::MAX, 4] {
        let mut flaky: Box<dyn Engine> = Box::new(FlakyEngine { inner: CpuEngine::new(), batches: 0, fail_at });
        flaky.prepare(&pb).unwrap();
        let (_, _, got) = permute_contrast(&mut flaky, &pb, &perms, &obs, Some(&job), &hidden).unwrap();
        assert_eq!(got.tfce_max, want.tfce_max, "fail at {fail_at}");
        assert_eq!(got.tfce_counts, want.tfce_counts, "fail at {fail_at}");
        assert_eq!(got.extent_max, want.extent_max, "fail at {fail_at}");
        assert_eq!(got.mass_max, want.mass_max, "fail at {fail_at}");
    }
}
