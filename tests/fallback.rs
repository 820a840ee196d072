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
