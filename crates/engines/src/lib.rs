//! voxflip's engines: batches of permutations to statistic maps and their reductions.
//!
//! An engine holds one contrast's [`ContrastProblem`] resident (the residuals E stay on the
//! device across batches) and, for each batch of permutations, computes for every
//! permutation j and voxel v the statistic T_jv (t or F, DESIGN.md), then keeps only:
//! - the per-permutation maximum over voxels ([`BatchResult::max_stat`]),
//! - per-voxel exceedance counts #{j in batch : T_jv >= observed_v} ([`BatchResult::exceed`]),
//! - on request the whole batch of maps, on the host or (GPU) left on the device.
//!
//! [`Engine`] names the two: [`cpu::CpuEngine`], the reference and the fallback, and
//! [`gpu::GpuEngine`], WGSL compute shaders through wgpu. The [`scheduler`] owns batching,
//! the overlap of the engine with the spatial statistics, and the fallback policy. Errors
//! are typed ([`EngineError`]) by what follows from them. Nothing here prints: messages for
//! the user go through the `log` crate.
pub mod cpu;
mod error;
pub mod gpu;
mod options;
pub mod scheduler;

pub use error::{EngineError, Result};
pub use options::{Backend, EngineOptions, GpuOptions, GpuTuning, SpatialPlacement};
pub use scheduler::{ContrastNulls, Progress, Scheduler};
pub use voxflip_shaders::GlmKernel;

use std::ops::Range;
use voxflip_stats::{ContrastProblem, PermSet};

/// What one batch produced.
#[derive(Clone, Debug, Default)]
pub struct BatchResult {
    /// Maximum statistic over voxels, one per permutation of the batch (in order).
    pub max_stat: Vec<f32>,
    /// Per-voxel counts of T_jv >= observed_v over the batch (empty if no observed map given).
    pub exceed: Vec<u32>,
}

/// The engine that runs the permutations.
pub enum Engine {
    Cpu(cpu::CpuEngine),
    Gpu(Box<gpu::GpuEngine>),
}

impl Engine {
    /// Human-readable description (backend and device), recorded in the sidecar.
    pub fn describe(&self) -> String {
        match self {
            Engine::Cpu(e) => e.describe(),
            Engine::Gpu(e) => e.describe(),
        }
    }

    /// Make `problem` resident (upload E, Q, ss). Called once per contrast.
    pub fn prepare(&mut self, problem: &ContrastProblem) -> Result<()> {
        match self {
            Engine::Cpu(e) => e.prepare(problem),
            Engine::Gpu(e) => e.prepare(problem),
        }
    }

    /// The largest batch this engine prefers (permutations per call).
    pub fn preferred_batch(&self) -> usize {
        match self {
            Engine::Cpu(e) => e.preferred_batch(),
            Engine::Gpu(e) => e.preferred_batch(),
        }
    }

    /// Run permutations `range` of `perms`. If `observed` is given (length v), count
    /// exceedances per voxel. If `maps` is given (length range.len() * v), write every
    /// statistic map of the batch into it, permutation-major.
    pub fn run_batch(
        &mut self,
        perms: &PermSet,
        range: Range<usize>,
        observed: Option<&[f32]>,
        maps: Option<&mut [f32]>,
    ) -> Result<BatchResult> {
        match self {
            Engine::Cpu(e) => e.run_batch(perms, range, observed, maps),
            Engine::Gpu(e) => e.run_batch(perms, range, observed, maps),
        }
    }
}

/// The engine `opts` asks for:
/// - `Cpu`: the CPU engine;
/// - `Gpu`: the GPU engine on the best adapter (or the one named), software adapters such
///   as lavapipe included; an error if none can be opened;
/// - `Auto`: the GPU engine on a hardware adapter when one can be opened, else the CPU
///   engine (software adapters are never chosen here: the CPU engine is much faster).
///
/// Says which engine runs (and, for `Auto`, why not the GPU) through `log`.
pub fn make_engine(opts: &EngineOptions) -> Result<Engine> {
    use gpu::{AdapterChoice, GpuEngine};
    let name = opts.gpu.adapter.clone();
    let engine = match opts.backend {
        Backend::Cpu => Engine::Cpu(cpu::CpuEngine::new()),
        Backend::Gpu => {
            Engine::Gpu(Box::new(GpuEngine::new(&AdapterChoice { name, allow_software: true }, &opts.gpu)?))
        }
        Backend::Auto => match GpuEngine::new(&AdapterChoice { name, allow_software: false }, &opts.gpu) {
            Ok(g) => Engine::Gpu(Box::new(g)),
            Err(e @ EngineError::Invalid(_)) => return Err(e),
            Err(e) => {
                if gpu::hardware_adapter_available() {
                    // A hardware GPU exists but could not be used: say why.
                    let why = e.to_string();
                    log::info!("{}; using the CPU engine", why.trim_end_matches("; use --backend cpu"));
                } else {
                    log::info!(
                        "no hardware GPU adapter; using the CPU engine \
                         (--backend gpu runs the shaders on a software adapter such as lavapipe)"
                    );
                }
                Engine::Cpu(cpu::CpuEngine::new())
            }
        },
    };
    log::info!("engine: {}", engine.describe());
    Ok(engine)
}
