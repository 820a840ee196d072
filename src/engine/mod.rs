//! Engines turn batches of permutations into the reductions inference needs.
//!
//! An engine holds one contrast's [`ContrastProblem`] resident (the residuals E stay on the
//! device across batches) and, for each batch of permutations, computes for every
//! permutation j and voxel v the statistic T_jv (t or F, see DESIGN.md), then keeps only:
//! - the per-permutation maximum over voxels (`max_stat`),
//! - per-voxel exceedance counts #{j in batch : T_jv >= observed_v} (`exceed`),
//! - optionally the whole batch of maps (B x V), for spatial statistics.
//!
//! The CPU engine ([`cpu::CpuEngine`]) is the reference and the fallback; the GPU engine
//! (`gpu`) implements the same trait with WGSL compute shaders.
use crate::error::Result;
use crate::perm::PermSet;
use std::ops::Range;

pub mod cpu;
pub mod gpu;

/// Which statistic the epilogue computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum StatKind {
    /// t = u_1 / sqrt(RSS / dof)   (s = 1)
    T,
    /// F = (|u_1..s|^2 / s) / (RSS / dof)
    F,
}

/// Everything an engine needs for one contrast; built by `glm::ContrastModel::problem`.
#[derive(Clone, Debug)]
pub struct ContrastProblem {
    /// Rows (images).
    pub n: usize,
    /// In-mask voxels.
    pub v: usize,
    /// Columns of the orthonormal basis Q (= rank of the design).
    pub q: usize,
    /// Rank of the contrast (1 for t).
    pub s: usize,
    pub kind: StatKind,
    /// Residual degrees of freedom, N - rank(M).
    pub dof: f32,
    /// Q: n x q, row-major (`qbasis[i * q + k]`); its first s columns span R_Z X.
    pub qbasis: Vec<f32>,
    /// E = R_Z Y: n x v, row-major (`e[i * v + vox]`).
    pub e: Vec<f32>,
    /// ||E[:, v]||^2 per voxel (computed in f64, stored as f32).
    pub ss: Vec<f32>,
}

impl ContrastProblem {
    /// Multiply-adds of the product for one permutation: q * n * v (2x that in flops).
    pub fn flops_per_perm(&self) -> f64 {
        2.0 * self.q as f64 * self.n as f64 * self.v as f64
    }
}

/// What one batch produced.
#[derive(Clone, Debug, Default)]
pub struct BatchResult {
    /// Maximum statistic over voxels, one per permutation of the batch (in order).
    pub max_stat: Vec<f32>,
    /// Per-voxel counts of T_jv >= observed_v over the batch (empty if no observed map given).
    pub exceed: Vec<u32>,
}

/// An engine computes statistic maps for batches of permutations.
pub trait Engine {
    /// Human-readable description (backend and device), recorded in the sidecar.
    fn describe(&self) -> String;
    /// Make `problem` resident (upload E, Q, ss). Called once per contrast.
    fn prepare(&mut self, problem: &ContrastProblem) -> Result<()>;
    /// The largest batch this engine prefers (permutations per call).
    fn preferred_batch(&self) -> usize;
    /// Run permutations `range` of `perms`. If `observed` is given (length v), count
    /// exceedances per voxel. If `maps` is given (length range.len() * v), write every
    /// statistic map of the batch into it, permutation-major.
    fn run_batch(
        &mut self,
        perms: &PermSet,
        range: Range<usize>,
        observed: Option<&[f32]>,
        maps: Option<&mut [f32]>,
    ) -> Result<BatchResult>;
    /// The GPU adapter on which the spatial statistics (TFCE, clusters) of this engine's
    /// maps should run, if any: the GPU engine's own adapter when it is hardware. Software
    /// adapters (lavapipe) reduce on the CPU, which is far faster there;
    /// VOXFLIP_GPU_SPATIAL=1 forces the GPU (tests), =0 forbids it.
    fn spatial_adapter(&self) -> Option<gpu::AdapterChoice> {
        None
    }
    /// The GPU engine behind this trait object, for stages that share its device.
    fn as_gpu(&mut self) -> Option<&mut gpu::GpuEngine> {
        None
    }
}

/// The statistic from the projected coefficients u (length q) and the voxel's ||E||^2,
/// the one formula every engine and twin must agree with.
#[inline]
pub fn statistic(kind: StatKind, u: &[f32], s: usize, ss: f32, dof: f32) -> f32 {
    let mut unorm = 0.0f32;
    for &x in u {
        unorm += x * x;
    }
    if !(ss > 0.0) {
        // A voxel with no residual variance at all carries no evidence: 0, never NaN.
        return 0.0;
    }
    // In f32, ss - |u|^2 loses about 1e-7 * ss to cancellation, so RSS below 1e-6 * ss is
    // rounding noise; clamping there bounds the statistic (|t| <= 1000 sqrt(dof)) instead
    // of letting it reach Inf. Real data never come near: t = 10 with dof = 56 has
    // RSS = 0.36 ss.
    let rss = (ss - unorm).max(ss * 1e-6);
    // One division and (for t) one square root: dof / RSS = 1 / sigma^2.
    let inv_sigma2 = dof / rss;
    match kind {
        StatKind::T => u[0] * inv_sigma2.sqrt(),
        StatKind::F => {
            let mut num = 0.0f32;
            for &x in &u[..s] {
                num += x * x;
            }
            num * (1.0 / s as f32) * inv_sigma2
        }
    }
}

/// `voxflip devices`: the adapters wgpu sees.
pub fn describe_devices() -> String {
    gpu::describe_adapters()
}

/// The GPU engine for the benchmark, if an adapter exists (software adapters only with
/// VOXFLIP_BENCH_SOFTWARE=1).
pub fn bench_gpu_engine() -> Option<Box<dyn Engine>> {
    let allow_software = std::env::var("VOXFLIP_BENCH_SOFTWARE").as_deref() == Ok("1");
    match gpu::GpuEngine::new(&gpu::AdapterChoice { name: None, allow_software }) {
        Ok(g) => Some(Box::new(g)),
        Err(e) => {
            eprintln!("gpu engine unavailable: {e}");
            None
        }
    }
}
