//! The scheduler: one contrast's permutations through an engine in batches, with the
//! spatial statistics of each batch reduced beside it, and the fallback policy.
//!
//! - Batching: the engine's preferred batch (at most [`SPATIAL_BATCH`] when the maps are
//!   kept for spatial statistics).
//! - Overlap: with spatial statistics, batch k's maps are reduced (TFCE, clusters; on the
//!   GPU reducer or the CPU) on a second thread while the engine computes batch k + 1.
//!   Reductions are appended strictly in batch order, so the result does not depend on the
//!   overlap. When the engine and the reducer share a GPU, the maps stay in device memory
//!   ([`BatchMaps::Device`]); otherwise two host map buffers alternate.
//! - Fallback: a GPU that fails (device lost, out of memory, an unsupported path) is said
//!   so on the log and replaced by the CPU engine, which reruns the failed batch: nothing
//!   of a failed batch is kept, and the answer is the same. A spatial reducer that fails
//!   likewise hands its batch and the rest to the CPU. An invalid input stops the run.
use crate::cpu::CpuEngine;
use crate::error::{EngineError, Result};
use crate::gpu::spatial::{BatchMaps, GpuSpatial};
use crate::options::SpatialPlacement;
use crate::Engine;
use std::ops::Range;
use voxflip_stats::spatial::{SpatialJob, SpatialNull, Workspace};
use voxflip_stats::{ContrastProblem, PermKind, PermSet};

/// Largest batch whose maps are held for spatial statistics (batch x V x 4 bytes).
pub const SPATIAL_BATCH: usize = 64;

/// Where the scheduler reports progress (permutations done): the binary draws a bar.
pub trait Progress: Sync {
    fn advance(&self, permutations: u64);
}

/// No progress report.
impl Progress for () {
    fn advance(&self, _: u64) {}
}

/// One contrast's permutation results over a range of its permutations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContrastNulls {
    /// Maximum statistic of every permutation of the range, in permutation order
    /// (permutation 0, the identity, is the observed map).
    pub max_stat: Vec<f32>,
    /// Per voxel, #{j in the range : T_jv >= observed_v}.
    pub counts: Vec<u32>,
    /// TFCE and cluster nulls (empty without spatial statistics).
    pub spatial: SpatialNull,
}

/// Runs contrasts on an engine (see the module docs).
pub struct Scheduler {
    engine: Engine,
    placement: SpatialPlacement,
    /// The GPU spatial reducer, opened on the engine's device on first use.
    reducer: Option<GpuSpatial>,
    /// Whether the current contrast's spatial statistics run on `reducer`.
    spatial_on_gpu: bool,
}

impl Scheduler {
    pub fn new(engine: Engine, placement: SpatialPlacement) -> Self {
        Scheduler { engine, placement, reducer: None, spatial_on_gpu: false }
    }

    /// Where the spatial statistics of the next contrasts run.
    pub fn set_placement(&mut self, placement: SpatialPlacement) {
        self.placement = placement;
    }

    /// The engine running now (the CPU engine after a fallback).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// The engine's description, for stderr and the sidecar.
    pub fn describe(&self) -> String {
        self.engine.describe()
    }

    /// Make `problem` resident; a GPU that cannot is replaced by the CPU engine.
    pub fn prepare(&mut self, problem: &ContrastProblem) -> Result<()> {
        run_with_fallback(&mut self.engine, problem, |e| e.prepare(problem))
    }

    /// The observed statistic map (the identity permutation, always index 0).
    pub fn observed_map(&mut self, problem: &ContrastProblem) -> Result<Vec<f32>> {
        observed_map(&mut self.engine, problem)
    }

    /// Decide where the spatial statistics of `job` run: on the GPU engine's adapter when
    /// the placement wants it there and the job can run there (not exact TFCE), else on the
    /// CPU. Returns the adapter's name when on the GPU; says why not on the log when the GPU
    /// was wanted but cannot.
    pub fn place_spatial(&mut self, job: &SpatialJob) -> Result<Option<String>> {
        self.spatial_on_gpu = false;
        let Engine::Gpu(g) = &self.engine else { return Ok(None) };
        let wanted = match self.placement {
            SpatialPlacement::Cpu => false,
            SpatialPlacement::Gpu => true,
            SpatialPlacement::Auto => !g.is_software(),
        };
        if !wanted {
            return Ok(None);
        }
        if job.tfce.is_some_and(|(_, o, _)| o.exact) {
            log::info!("exact TFCE runs on the CPU");
            return Ok(None);
        }
        if self.reducer.is_none() {
            // On the GPU engine's own device, so that its maps need not leave the device.
            match GpuSpatial::on_device(g.device().clone()) {
                Ok(r) => {
                    log::info!("spatial statistics (TFCE, clusters) on the GPU: {}", r.adapter_info().name);
                    self.reducer = Some(r);
                }
                Err(e) if e.falls_back() => {
                    log::warn!("spatial statistics on the CPU: {}", e.message());
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
        let r = self.reducer.as_mut().expect("opened above");
        match r.configure(job) {
            Ok(()) => {}
            Err(e) if e.falls_back() => {
                log::warn!("spatial statistics on the CPU: {}", e.message());
                self.reducer = None;
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        self.spatial_on_gpu = true;
        Ok(Some(r.adapter_info().name.clone()))
    }

    /// The TFCE map of the observed map, computed where the permutations' maps will be
    /// reduced, so that the identity permutation's TFCE equals it exactly and counts itself.
    pub fn tfce_observed(&mut self, job: &SpatialJob, observed: &[f32]) -> Result<Vec<f32>> {
        if let (true, Some(r)) = (self.spatial_on_gpu, self.reducer.as_mut()) {
            // Configured for `job` by `place_spatial`.
            match r.tfce_map(observed) {
                Ok(t) => return Ok(t),
                Err(e) if e.falls_back() => {
                    log::warn!("spatial statistics on the CPU: {}", e.message());
                    self.spatial_on_gpu = false;
                }
                Err(e) => return Err(e),
            }
        }
        let mut out = vec![0f32; observed.len()];
        job.tfce_map(observed, &mut Workspace::new(), &mut out).map_err(|e| EngineError::Invalid(e.to_string()))?;
        Ok(out)
    }

    /// The max-statistic null, the exceedance counts and (with `spatial`) the spatial nulls
    /// of one contrast, over permutations `range` of `perms` (a shard, or a stretch between
    /// checkpoints: the nulls of consecutive ranges appended are those of their union).
    /// `spatial` is the job last given to [`Scheduler::place_spatial`], now with its
    /// observed TFCE map.
    pub fn permute(
        &mut self,
        problem: &ContrastProblem,
        perms: &PermSet,
        range: Range<usize>,
        observed: &[f32],
        spatial: Option<&SpatialJob>,
        progress: &dyn Progress,
    ) -> Result<ContrastNulls> {
        let mut on_gpu = spatial.is_some() && self.spatial_on_gpu;
        let observed_tfce = spatial.and_then(|job| job.tfce_observed);
        if let (true, Some(obs), Some(r)) = (on_gpu, observed_tfce, self.reducer.as_mut()) {
            // The reducer was configured by `place_spatial`; now the observed TFCE map, for
            // the exceedance counts.
            match r.set_tfce_observed(obs) {
                Ok(()) => {}
                Err(e) if e.falls_back() => {
                    log::warn!("spatial statistics on the CPU: {}", e.message());
                    on_gpu = false;
                }
                Err(e) => return Err(e),
            }
        }
        let reducer = if on_gpu { self.reducer.as_mut() } else { None };
        permute_contrast(&mut self.engine, problem, perms, range, observed, spatial, reducer, progress)
    }
}

/// The observed statistic map of `problem` on `engine` (the identity permutation).
pub fn observed_map(engine: &mut Engine, problem: &ContrastProblem) -> Result<Vec<f32>> {
    let identity =
        PermSet::generate(problem.n, PermKind::SignFlip, &vec![0; problem.n], 1, 0).map_err(EngineError::Invalid)?;
    let mut observed = vec![0f32; problem.v];
    run_with_fallback(engine, problem, |e| e.run_batch(&identity, 0..1, None, Some(&mut observed)).map(|_| ()))?;
    Ok(observed)
}

/// One contrast's voxelwise permutation results.
#[derive(Clone, Debug)]
pub struct ContrastResult {
    /// The observed statistic map (permutation 0), in-mask voxels.
    pub observed: Vec<f32>,
    /// Maximum statistic of every permutation, in permutation order (index 0 = observed).
    pub null: Vec<f32>,
    /// Per voxel, #{j : T_jv >= observed_v} over all permutations (identity included).
    pub counts: Vec<u32>,
}

/// Every permutation of `perms` for one problem on a fresh CPU engine (the entry point of
/// tests and oracles; the pipeline adds spatial statistics, engines and outputs).
pub fn permutation_test(problem: &ContrastProblem, perms: &PermSet) -> Result<ContrastResult> {
    let mut engine = Engine::Cpu(CpuEngine::new());
    engine.prepare(problem)?;
    let observed = observed_map(&mut engine, problem)?;
    let nulls = permute_contrast(&mut engine, problem, perms, 0..perms.len(), &observed, None, None, &())?;
    Ok(ContrastResult { observed, null: nulls.max_stat, counts: nulls.counts })
}

/// The nulls of one contrast over permutations `range` of `perms` on `engine`, with the spatial
/// statistics of `spatial` reduced by `reducer` (configured for it) when given, else on the
/// CPU. See the module docs for the overlap and the fallbacks.
pub fn permute_contrast(
    engine: &mut Engine,
    problem: &ContrastProblem,
    perms: &PermSet,
    range: Range<usize>,
    observed: &[f32],
    spatial: Option<&SpatialJob>,
    mut reducer: Option<&mut GpuSpatial>,
    progress: &dyn Progress,
) -> Result<ContrastNulls> {
    let v = problem.v;
    let end = range.end;
    if range.start > end || end > perms.len() {
        return Err(EngineError::Invalid(format!("permutations {}..{end} of a set of {}", range.start, perms.len())));
    }
    let mut out =
        ContrastNulls { max_stat: Vec::with_capacity(range.len()), counts: vec![0u32; v], ..Default::default() };
    let Some(job) = spatial else {
        let mut done = range.start;
        while done < end {
            let b = engine.preferred_batch().min(end - done);
            let res = run_with_fallback(engine, problem, |e| e.run_batch(perms, done..done + b, Some(observed), None))?;
            out.add_batch(&res);
            done += b;
            progress.advance(b as u64);
        }
        return Ok(out);
    };
    std::thread::scope(|scope| -> Result<()> {
        let mut spare: Vec<f32> = Vec::new();
        let mut in_flight: Option<std::thread::ScopedJoinHandle<'_, Reduced<'_>>> = None;
        let mut gpu = reducer.take();
        // Maps stay on the device while the GPU reducer works (mass needs a threshold > 0).
        let mut device_spatial = gpu.is_some() && job.mass_thr.is_none_or(|t| t > 0.0);
        let mut done = range.start;
        while done < end {
            let b = engine.preferred_batch().min(end - done).min(SPATIAL_BATCH);
            let range = done..done + b;
            // (The reducer itself may be out on the thread reducing the previous batch.)
            let mut launched = false;
            if let Engine::Gpu(g) = engine {
                if device_spatial && g.can_keep_maps(b) {
                    let ran = g.run_batch_on_device(perms, range.clone(), Some(observed));
                    collect(&mut in_flight, engine, &mut gpu, &mut spare, &mut out.spatial, (problem, perms, job))?;
                    // A reducer that failed on the previous batch is gone: this batch is
                    // redone on the host (its thread gets no reducer) and the rest stay there.
                    device_spatial &= gpu.is_some();
                    match ran {
                        Ok((res, buf)) => {
                            out.add_batch(&res);
                            let g = gpu.take();
                            let r = range.clone();
                            in_flight = Some(scope.spawn(move || reduce_device_maps(g, buf, res.max_stat, v, r)));
                            launched = true;
                        }
                        Err(e) if e.falls_back() => {
                            // The device is gone for the reducer too: both continue on the CPU.
                            switch_to_cpu(engine, problem, &e)?;
                            gpu = None;
                            device_spatial = false;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            if !launched {
                let mut maps = std::mem::take(&mut spare);
                maps.resize(b * v, 0f32);
                let res = run_with_fallback(engine, problem, |e| {
                    e.run_batch(perms, range.clone(), Some(observed), Some(&mut maps[..]))
                });
                // Collect the previous batch's reduction before anything else can fail.
                collect(&mut in_flight, engine, &mut gpu, &mut spare, &mut out.spatial, (problem, perms, job))?;
                out.add_batch(&res?);
                let g = gpu.take();
                in_flight = Some(scope.spawn(move || reduce_maps(job, g, maps, v)));
            }
            done += b;
            progress.advance(b as u64);
        }
        collect(&mut in_flight, engine, &mut gpu, &mut spare, &mut out.spatial, (problem, perms, job))
    })?;
    Ok(out)
}

impl ContrastNulls {
    /// Append the nulls of the permutations that follow these (`later`): the result is the
    /// nulls of the two ranges together.
    pub fn append(&mut self, later: ContrastNulls) {
        self.max_stat.extend(later.max_stat);
        if self.counts.is_empty() {
            self.counts = later.counts;
        } else {
            for (c, x) in self.counts.iter_mut().zip(&later.counts) {
                *c += x;
            }
        }
        self.spatial.append(later.spatial);
    }

    fn add_batch(&mut self, res: &crate::BatchResult) {
        self.max_stat.extend_from_slice(&res.max_stat);
        for (c, x) in self.counts.iter_mut().zip(&res.exceed) {
            *c += x;
        }
    }
}

/// Collect the reduction in flight (in batch order) into `snull`. A batch whose maps stayed
/// on a device that then failed is recomputed on the host and reduced on the CPU.
fn collect<'s, 'g>(
    in_flight: &mut Option<std::thread::ScopedJoinHandle<'s, Reduced<'g>>>,
    engine: &mut Engine,
    gpu: &mut Option<&'g mut GpuSpatial>,
    spare: &mut Vec<f32>,
    snull: &mut SpatialNull,
    (problem, perms, job): (&ContrastProblem, &PermSet, &SpatialJob),
) -> Result<()> {
    let Some(h) = in_flight.take() else { return Ok(()) };
    let (outcome, g) = h.join().expect("spatial reduction thread panicked");
    *gpu = g;
    match outcome {
        Outcome::Reduced(part, buf) => {
            snull.append(part);
            if let Some(buf) = buf {
                *spare = buf;
            }
        }
        Outcome::Redo(range) => {
            let v = problem.v;
            let mut maps = vec![0f32; range.len() * v];
            run_with_fallback(engine, problem, |e| e.run_batch(perms, range.clone(), None, Some(&mut maps[..])))?;
            job.reduce(&maps, v, snull).map_err(|e| EngineError::Invalid(e.to_string()))?;
        }
        Outcome::Failed(e) => return Err(e),
    }
    Ok(())
}

/// What the reduction thread hands back with the reducer (if still usable).
type Reduced<'g> = (Outcome, Option<&'g mut GpuSpatial>);

enum Outcome {
    /// The batch's nulls, and the host map buffer for reuse (None for device maps).
    Reduced(SpatialNull, Option<Vec<f32>>),
    /// The GPU failed on device-resident maps: recompute this range's maps on the host.
    Redo(Range<usize>),
    /// The reduction cannot be done anywhere (an invalid input): the run stops.
    Failed(EngineError),
}

/// The spatial statistics of a batch whose maps are in `buf` on the reducer's device.
fn reduce_device_maps(
    gpu: Option<&mut GpuSpatial>,
    buf: wgpu::Buffer,
    maxima: Vec<f32>,
    v: usize,
    range: Range<usize>,
) -> Reduced<'_> {
    let Some(gs) = gpu else { return (Outcome::Redo(range), None) };
    let mut part = SpatialNull::default();
    match gs.reduce(BatchMaps::Device { buf: &buf, maxima: &maxima }, v, &mut part) {
        Ok(()) => (Outcome::Reduced(part, None), Some(gs)),
        Err(e) if e.falls_back() => {
            log::warn!("GPU spatial statistics failed ({}); continuing on the CPU from this batch", e.message());
            (Outcome::Redo(range), None)
        }
        Err(e) => (Outcome::Failed(e), Some(gs)),
    }
}

/// The spatial statistics of one batch of maps: on the GPU reducer when there is one, else
/// (or if it fails: said on the log, and the GPU is not used again) on the CPU. Returns the
/// map buffer for reuse, the reducer if it is still usable, and the batch's nulls.
fn reduce_maps<'g>(job: &SpatialJob, gpu: Option<&'g mut GpuSpatial>, maps: Vec<f32>, v: usize) -> Reduced<'g> {
    let mut part = SpatialNull::default();
    if let Some(gs) = gpu {
        match gs.reduce(BatchMaps::Host(&maps), v, &mut part) {
            Ok(()) => return (Outcome::Reduced(part, Some(maps)), Some(gs)),
            Err(e) if e.falls_back() => {
                log::warn!("GPU spatial statistics failed ({}); continuing on the CPU from this batch", e.message());
                part = SpatialNull::default();
            }
            Err(e) => return (Outcome::Failed(e), Some(gs)),
        }
    }
    match job.reduce(&maps, v, &mut part) {
        Ok(()) => (Outcome::Reduced(part, Some(maps)), None),
        Err(e) => (Outcome::Failed(EngineError::Invalid(e.to_string())), None),
    }
}

/// Replace a GPU engine that failed with `e` by the CPU engine, prepared for `problem`,
/// saying so.
fn switch_to_cpu(engine: &mut Engine, problem: &ContrastProblem, e: &EngineError) -> Result<()> {
    log::warn!("GPU failed ({}); continuing on the CPU engine from this batch", e.message());
    let mut cpu = CpuEngine::new();
    cpu.prepare(problem)?;
    *engine = Engine::Cpu(cpu);
    Ok(())
}

/// Run `f` on the engine; if the GPU fails (device lost, out of memory, unsupported), say
/// so, switch to the CPU engine and run the same call there, so the run continues from
/// where it was. An invalid input is returned as it is.
fn run_with_fallback<T>(
    engine: &mut Engine,
    problem: &ContrastProblem,
    mut f: impl FnMut(&mut Engine) -> Result<T>,
) -> Result<T> {
    match f(engine) {
        Err(e) if e.falls_back() && matches!(engine, Engine::Gpu(_)) => {
            switch_to_cpu(engine, problem, &e)?;
            f(engine)
        }
        other => other,
    }
}
