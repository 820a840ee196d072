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
//! [`gpu::GpuEngine`], WGSL compute shaders through wgpu. [`make_engine`] opens one,
//! [`make_engines`] several (every adapter, a list, the CPU beside them). The [`scheduler`]
//! owns batching, the overlap of the engine with the spatial statistics, the sharing of the
//! permutations between several engines, and the fallback policy. Errors
//! are typed ([`EngineError`]) by what follows from them. Nothing here prints: messages for
//! the user go through the `log` crate.
pub mod cpu;
mod error;
pub mod gpu;
mod options;
pub mod scheduler;
mod smoothed;

pub use error::{EngineError, Result};
pub use options::{Backend, EngineOptions, GpuOptions, GpuTuning, Product, SpatialPlacement};
pub use scheduler::{ContrastNulls, Progress, Scheduler};
pub use voxflip_shaders::GlmKernel;

use std::ops::Range;
use std::sync::Arc;
use voxflip_stats::{ContrastProblem, PermSet, StatKind, VarianceSmoothing};

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

    /// Which product forms the coefficients of the batches that follow.
    pub fn set_product(&mut self, product: Product) {
        match self {
            Engine::Cpu(e) => e.set_product(product),
            Engine::Gpu(e) => e.set_product(product),
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
        let own = match self {
            Engine::Cpu(e) => e.preferred_batch(),
            Engine::Gpu(e) => e.preferred_batch(),
        };
        if self.smoothed().is_some() {
            own.min(smoothed::SMOOTHED_BATCH)
        } else {
            own
        }
    }

    /// randomise's variance smoothing (`-v`): with `Some`, every t contrast this engine
    /// runs from now on is the pseudo-t of [`VarianceSmoothing`] (its maps, maxima and
    /// counts); F contrasts are not smoothed, as in randomise. Kept across `prepare`.
    pub fn set_smoothing(&mut self, smoothing: Option<Arc<VarianceSmoothing>>) {
        match self {
            Engine::Cpu(e) => e.smoothing = smoothing,
            Engine::Gpu(e) => e.smoothing = smoothing,
        }
    }

    /// The smoothing [`Engine::set_smoothing`] set.
    pub fn smoothing(&self) -> Option<&Arc<VarianceSmoothing>> {
        match self {
            Engine::Cpu(e) => e.smoothing.as_ref(),
            Engine::Gpu(e) => e.smoothing.as_ref(),
        }
    }

    /// The smoothing and the prepared problem's (q, dof, ss) when the prepared contrast is
    /// a t contrast whose variance is smoothed.
    fn smoothed(&self) -> Option<(Arc<VarianceSmoothing>, usize, f32, &[f32])> {
        match self {
            Engine::Cpu(e) => e.smoothed(),
            Engine::Gpu(e) => e.smoothed(),
        }
    }

    fn set_statistic(&mut self, kind: StatKind, s: usize) {
        match self {
            Engine::Cpu(e) => e.set_statistic(kind, s),
            Engine::Gpu(e) => e.set_statistic(kind, s),
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
        if self.smoothed().is_some() {
            return smoothed::run_batch(self, perms, range, observed, maps);
        }
        self.run_raw(perms, range, observed, maps)
    }

    /// [`Engine::run_batch`] without variance smoothing: the engine's own statistic.
    fn run_raw(
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

impl Engine {
    /// Whether [`Engine::run_batch_mirrored`] computes a contrast and its mirror from one
    /// product (the CPU engine; the GPU engine's kernels reduce one sign only; not with
    /// variance smoothing, whose maps are formed outside the kernels).
    pub fn mirrors(&self) -> bool {
        matches!(self, Engine::Cpu(_)) && self.smoothing().is_none()
    }

    /// [`Engine::run_batch`] for a t contrast and its mirror, the contrast of the negated
    /// weights whose problem is the prepared one with Q's first column negated: from one
    /// product, the mirror's maxima, its counts against `mirror_observed` and its maps, as a
    /// run of its own problem gives them ([`cpu::CpuEngine::run_batch_mirrored`]). An engine
    /// that does not [mirror](Engine::mirrors) answers [`EngineError::Unsupported`].
    pub fn run_batch_mirrored(
        &mut self,
        perms: &PermSet,
        range: Range<usize>,
        observed: Option<&[f32]>,
        maps: Option<&mut [f32]>,
        mirror_observed: Option<&[f32]>,
        mirror_maps: Option<&mut [f32]>,
    ) -> Result<(BatchResult, BatchResult)> {
        if self.smoothing().is_some() {
            return Err(EngineError::Unsupported("a contrast and its mirror with variance smoothing".into()));
        }
        match self {
            Engine::Cpu(e) => e.run_batch_mirrored(perms, range, observed, maps, mirror_observed, mirror_maps),
            Engine::Gpu(_) => Err(EngineError::Unsupported("the GPU engine reduces one sign of a contrast".into())),
        }
    }
}

/// Engines move to the scheduler's worker threads, one each (wgpu's handles are Send on
/// native targets).
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Engine>();
};

/// The description of a run's engines, for stderr and the sidecar: the engine's own
/// description, or `multi: A; B; ...` for several (the first computes the observed maps).
pub fn describe_engines(engines: &[Engine]) -> String {
    match engines {
        [one] => one.describe(),
        several => format!("multi: {}", several.iter().map(Engine::describe).collect::<Vec<_>>().join("; ")),
    }
}

/// The engine `opts` asks for:
/// - `Cpu`: the CPU engine;
/// - `Gpu`: the GPU engine on the best adapter (or the one named), software adapters such
///   as lavapipe included; an error if none can be opened;
/// - `Auto`: the GPU engine on a hardware adapter when one can be opened, else the CPU
///   engine (software adapters are never chosen here: the CPU engine is much faster).
///
/// Says which engine runs (and, for `Auto`, why not the GPU) through `log`. One engine
/// only: options that ask for several ([`EngineOptions::wants_several`]) are an error here;
/// [`make_engines`] makes them.
pub fn make_engine(opts: &EngineOptions) -> Result<Engine> {
    if opts.wants_several() {
        return Err(EngineError::Invalid(
            "--adapter all, a list of adapters or --with-cpu asks for several engines (make_engines)".into(),
        ));
    }
    let mut engine = one_engine(opts)?;
    engine.set_product(opts.product);
    log::info!("engine: {}", engine.describe());
    Ok(engine)
}

/// The engines `opts` asks for, the first the one that computes the observed maps (see
/// [`Scheduler`] for how they share the permutations):
/// - one engine as [`make_engine`] makes it, without `--adapter all`, a list or `--with-cpu`;
/// - `--adapter all`: every adapter the backend allows ([`gpu::AdapterSpec::All`]: with
///   `Gpu` software adapters too, with `Auto` hardware ones only), best first; one that
///   cannot be opened is skipped, saying why;
/// - `--adapter A,B`: one distinct adapter per pattern ([`gpu::AdapterSpec::List`]); a
///   pattern that matches nothing is an error naming it;
/// - `--with-cpu`: the CPU engine as one more worker (not twice: where `Auto` found no GPU
///   the CPU engine runs alone).
///
/// With `Auto`, no usable adapter means the CPU engine, as for one adapter. Several engines
/// with `--backend cpu` are an error (the binary refuses the flags before this).
pub fn make_engines(opts: &EngineOptions) -> Result<Vec<Engine>> {
    if !opts.wants_several() {
        return Ok(vec![make_engine(opts)?]);
    }
    if opts.backend == Backend::Cpu {
        return Err(EngineError::Invalid(
            "--adapter all, a list of adapters and --with-cpu need --backend gpu or auto".into(),
        ));
    }
    let spec = gpu::AdapterSpec::parse(opts.gpu.adapter.as_deref());
    let mut engines = if spec.is_multi() { open_adapters(&spec, opts)? } else { vec![one_engine(opts)?] };
    if opts.with_cpu && !engines.iter().any(|e| matches!(e, Engine::Cpu(_))) {
        engines.push(Engine::Cpu(cpu::CpuEngine::new()));
    }
    for e in engines.iter_mut() {
        e.set_product(opts.product);
    }
    match engines.as_slice() {
        [one] => log::info!("engine: {}", one.describe()),
        several => log::info!("engines ({}): {}", several.len(), describe_engines(several)),
    }
    Ok(engines)
}

/// The GPU engines of `--adapter all` or a list (see [`make_engines`]).
fn open_adapters(spec: &gpu::AdapterSpec, opts: &EngineOptions) -> Result<Vec<Engine>> {
    use gpu::{AdapterChoice, GpuEngine};
    let allow_software = opts.backend == Backend::Gpu;
    let typed = opts.gpu.adapter.as_deref().unwrap_or_default();
    let to_cpu = |e: &EngineError| Ok(vec![auto_to_cpu(e)]);
    let patterns = match gpu::resolve_adapters(spec, typed, allow_software) {
        Ok(p) => p,
        Err(e @ EngineError::Invalid(_)) => return Err(e),
        Err(e) if opts.backend == Backend::Auto => return to_cpu(&e),
        Err(e) => return Err(e),
    };
    let mut engines = Vec::new();
    for name in patterns {
        match GpuEngine::new(&AdapterChoice { name: Some(name), allow_software }, &opts.gpu) {
            Ok(g) => engines.push(Engine::Gpu(Box::new(g))),
            Err(e @ EngineError::Invalid(_)) => return Err(e),
            Err(e) if *spec == gpu::AdapterSpec::All => log::warn!("--adapter all: {}", e.message()),
            Err(e) if opts.backend == Backend::Auto => return to_cpu(&e),
            Err(e) => return Err(e),
        }
    }
    if engines.is_empty() {
        let e =
            EngineError::Unsupported(format!("--adapter {typed}: no GPU adapter could be opened; use --backend cpu"));
        return if opts.backend == Backend::Auto { to_cpu(&e) } else { Err(e) };
    }
    Ok(engines)
}

/// One engine as [`make_engine`] describes it (without saying which).
fn one_engine(opts: &EngineOptions) -> Result<Engine> {
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
            Err(e) => auto_to_cpu(&e),
        },
    };
    Ok(engine)
}

/// `--backend auto` without a usable GPU: the CPU engine, saying why.
fn auto_to_cpu(e: &EngineError) -> Engine {
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
