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
//! - Several engines (`--adapter all`, a list, `--with-cpu`; [`Scheduler::with_engines`]):
//!   the permutations are cut into chunks of a few batches, numbered from permutation 0 of
//!   the set, and each engine runs chunks on a thread of its own (with the single-engine
//!   path above, spatial statistics on the CPU); the chunks' nulls are appended in
//!   permutation order. See [`Scheduler`] for what this gives identical to one engine.
use crate::cpu::CpuEngine;
use crate::error::{EngineError, Result};
use crate::gpu::spatial::{BatchMaps, GpuSpatial};
use crate::options::SpatialPlacement;
use crate::Engine;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use voxflip_stats::spatial::{SpatialJob, SpatialNull, Workspace};
use voxflip_stats::{add_counts, ContrastProblem, PermKind, PermSet};

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

/// Runs contrasts on an engine, or on several (see the module docs).
///
/// With several engines, the first (the primary) computes the observed maps and the chunk
/// of the identity permutation, so that it counts itself exactly as on one engine. Which
/// engine runs which other chunk:
/// - all GPU engines: whichever is free next (a shared counter), so that a fast adapter
///   takes more. The result is identical to a run on the primary alone when the adapters
///   compute identically, as Mesa's Vulkan and GL llvmpipe adapters do (measured: every
///   output bit for bit); adapters that round differently may differ from it in the last
///   bits of some permutations' statistics, and from run to run as the timing falls.
/// - with the CPU engine (`--with-cpu`), which rounds differently from the GPU kernels (in
///   the last bit of a statistic, about 1e-7 relative): chunk k goes to the CPU when
///   k mod (number of engines) is the last position, else to the GPU engines (shared as
///   above), so that which permutations the CPU computes depends only on the permutation
///   index and the engines, never on the timing: runs repeat bit for bit, and a run split
///   into shards, stretches or resumed equals the whole. The CPU's permutations may differ
///   from the GPU's in the last bits of the statistic, which can change a p-value only at a
///   tie within that rounding. The CPU gets an equal share: it helps where it is about as
///   fast as each GPU (software adapters, small GPUs) and slows a run where a GPU is much
///   faster.
/// - a GPU that fails continues on the CPU (as on one engine); which of the rest of its
///   chunks it then computes depends on the timing.
pub struct Scheduler {
    engine: Engine,
    /// The other engines of a multi-engine run, after the primary `engine`.
    others: Vec<Engine>,
    /// Whether the log said that spatial statistics run on the CPU with several engines.
    said_spatial_cpu: bool,
    /// Permutations each engine ran (primary first), said on the log at the end.
    shares: Vec<u64>,
    placement: SpatialPlacement,
    /// The GPU spatial reducer, opened on the engine's device on first use.
    reducer: Option<GpuSpatial>,
    /// Whether the current contrast's spatial statistics run on `reducer`.
    spatial_on_gpu: bool,
}

impl Scheduler {
    pub fn new(engine: Engine, placement: SpatialPlacement) -> Self {
        Self::with_engines(vec![engine], placement)
    }

    /// A scheduler over `engines` ([`crate::make_engines`]; at least one): the first computes
    /// the observed maps and is [`Scheduler::engine`]; with several, see [`Scheduler`].
    pub fn with_engines(engines: Vec<Engine>, placement: SpatialPlacement) -> Self {
        let mut engines = engines.into_iter();
        let engine = engines.next().expect("a scheduler needs an engine");
        Scheduler {
            engine,
            others: engines.collect(),
            said_spatial_cpu: false,
            shares: Vec::new(),
            placement,
            reducer: None,
            spatial_on_gpu: false,
        }
    }

    /// randomise's variance smoothing on every engine ([`Engine::set_smoothing`]), kept by
    /// the CPU engine that replaces a failed GPU.
    pub fn set_smoothing(&mut self, smoothing: Option<std::sync::Arc<voxflip_stats::VarianceSmoothing>>) {
        for e in std::iter::once(&mut self.engine).chain(self.others.iter_mut()) {
            e.set_smoothing(smoothing.clone());
        }
    }

    /// Where the spatial statistics of the next contrasts run.
    pub fn set_placement(&mut self, placement: SpatialPlacement) {
        self.placement = placement;
    }

    /// The (primary) engine running now (the CPU engine after a fallback).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// The engines' description ([`crate::describe_engines`]), for stderr and the sidecar.
    pub fn describe(&self) -> String {
        if self.others.is_empty() {
            return self.engine.describe();
        }
        let all: Vec<String> = std::iter::once(&self.engine).chain(&self.others).map(Engine::describe).collect();
        format!("multi: {}", all.join("; "))
    }

    /// Make `problem` resident on every engine; a GPU that cannot is replaced by the CPU
    /// engine.
    pub fn prepare(&mut self, problem: &ContrastProblem) -> Result<()> {
        run_with_fallback(&mut self.engine, problem, |e| e.prepare(problem))?;
        for engine in &mut self.others {
            run_with_fallback(engine, problem, |e| e.prepare(problem))?;
        }
        Ok(())
    }

    /// The observed statistic map (the identity permutation, always index 0).
    pub fn observed_map(&mut self, problem: &ContrastProblem, kind: PermKind) -> Result<Vec<f32>> {
        observed_map(&mut self.engine, problem, kind)
    }

    /// Decide where the spatial statistics of `job` run: on the GPU engine's adapter when
    /// the placement wants it there and the job can run there, else on the
    /// CPU. Returns the adapter's name when on the GPU; says why not on the log when the GPU
    /// was wanted but cannot.
    pub fn place_spatial(&mut self, job: &SpatialJob) -> Result<Option<String>> {
        self.spatial_on_gpu = false;
        if !self.others.is_empty() {
            // Each engine's maps are reduced beside it, on the CPU.
            if !self.said_spatial_cpu {
                log::info!("spatial statistics (TFCE, clusters) run on the CPU with several engines");
                self.said_spatial_cpu = true;
            }
            return Ok(None);
        }
        let Engine::Gpu(g) = &self.engine else { return Ok(None) };
        let wanted = match self.placement {
            SpatialPlacement::Cpu => false,
            SpatialPlacement::Gpu => true,
            // Exact TFCE is one sequential sweep per map on the device: asked for, not chosen.
            SpatialPlacement::Auto => !g.is_software() && !job.tfce.is_some_and(|(_, o, _)| o.exact),
        };
        if !wanted {
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
        if !self.others.is_empty() {
            return self.permute_several(problem, perms, range, observed, spatial, progress);
        }
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

    /// The statistic maps of permutations `range` of `perms` for `problem` (prepared), into
    /// `maps` (permutation-major, V values each); a GPU that fails continues on the CPU, as
    /// in [`Scheduler::permute`].
    pub fn permutation_maps(
        &mut self,
        problem: &ContrastProblem,
        perms: &PermSet,
        range: Range<usize>,
        maps: &mut [f32],
    ) -> Result<()> {
        check_range(perms, &range)?;
        run_with_fallback(&mut self.engine, problem, |e| e.run_batch(perms, range.clone(), None, Some(&mut *maps)))
            .map(|_| ())
    }

    /// Whether [`Scheduler::permute_mirrored`] can run a t contrast and its mirror from one
    /// product: one engine that [mirrors](Engine::mirrors), with spatial statistics (if any)
    /// on the CPU.
    pub fn mirrors(&self) -> bool {
        self.others.is_empty() && self.engine.mirrors()
    }

    /// [`Scheduler::permute`] for a t contrast and its mirror at once (the contrast of the
    /// negated weights: `problem`, prepared, with Q's first column negated), from one
    /// product per batch: `observed` and `spatial` are the two contrasts' own (the mirror's
    /// TFCE with its own step). The two nulls equal those of two [`Scheduler::permute`]
    /// calls, the mirror's on its own problem, bit for bit: the same batches, the same
    /// reductions of the same statistics, in the same order. Only where
    /// [`Scheduler::mirrors`].
    pub fn permute_mirrored(
        &mut self,
        problem: &ContrastProblem,
        perms: &PermSet,
        range: Range<usize>,
        observed: [&[f32]; 2],
        spatial: Option<[&SpatialJob; 2]>,
        progress: &dyn Progress,
    ) -> Result<[ContrastNulls; 2]> {
        if !self.mirrors() {
            return Err(EngineError::Invalid("a contrast and its mirror at once need one CPU engine".into()));
        }
        check_range(perms, &range)?;
        let (engine, v, end) = (&mut self.engine, problem.v, range.end);
        let empty =
            || ContrastNulls { max_stat: Vec::with_capacity(range.len()), counts: vec![0u32; v], ..Default::default() };
        let mut out = [empty(), empty()];
        let range = {
            let [a, b] = &mut out;
            take_identity(a, range.clone(), observed[0], spatial.map(|j| j[0]), progress)?;
            take_identity(b, range, observed[1], spatial.map(|j| j[1]), progress)?
        };
        let Some(jobs) = spatial else {
            let mut done = range.start;
            while done < end {
                let b = engine.preferred_batch().min(end - done);
                let (a, m) = engine.run_batch_mirrored(
                    perms,
                    done..done + b,
                    Some(observed[0]),
                    None,
                    Some(observed[1]),
                    None,
                )?;
                out[0].add_batch(&a);
                out[1].add_batch(&m);
                done += b;
                progress.advance(2 * b as u64);
            }
            return Ok(out);
        };
        // As permute_contrast's host path: batch k's maps, both signs, reduced on a second
        // thread while the engine computes batch k + 1, appended in batch order.
        std::thread::scope(|scope| -> Result<()> {
            type Pair = [Vec<f32>; 2];
            type Reduction = Result<([SpatialNull; 2], Pair)>;
            let mut spare: Pair = [Vec::new(), Vec::new()];
            let mut in_flight: Option<std::thread::ScopedJoinHandle<'_, Reduction>> = None;
            let collect = |in_flight: &mut Option<std::thread::ScopedJoinHandle<'_, _>>,
                           spare: &mut Pair,
                           out: &mut [ContrastNulls; 2]|
             -> Result<()> {
                if let Some(h) = in_flight.take() {
                    let (parts, maps): ([SpatialNull; 2], Pair) =
                        h.join().expect("spatial reduction thread panicked")?;
                    for (o, part) in out.iter_mut().zip(parts) {
                        o.spatial.append(part);
                    }
                    *spare = maps;
                }
                Ok(())
            };
            let mut done = range.start;
            while done < end {
                let b = engine.preferred_batch().min(end - done).min(SPATIAL_BATCH);
                let [mut maps, mut mirror_maps] = std::mem::take(&mut spare);
                maps.resize(b * v, 0f32);
                mirror_maps.resize(b * v, 0f32);
                let res = engine.run_batch_mirrored(
                    perms,
                    done..done + b,
                    Some(observed[0]),
                    Some(&mut maps[..]),
                    Some(observed[1]),
                    Some(&mut mirror_maps[..]),
                );
                collect(&mut in_flight, &mut spare, &mut out)?;
                let (a, m) = res?;
                out[0].add_batch(&a);
                out[1].add_batch(&m);
                in_flight = Some(scope.spawn(move || {
                    let mut parts = [SpatialNull::default(), SpatialNull::default()];
                    for ((job, maps), part) in jobs.iter().zip([&maps, &mirror_maps]).zip(&mut parts) {
                        job.reduce(maps, v, part).map_err(|e| EngineError::Invalid(e.to_string()))?;
                    }
                    Ok((parts, [maps, mirror_maps]))
                }));
                done += b;
                progress.advance(2 * b as u64);
            }
            collect(&mut in_flight, &mut spare, &mut out)
        })?;
        Ok(out)
    }

    /// [`Scheduler::permute`] on several engines (see [`Scheduler`]): chunks of
    /// [`chunk_size`] permutations, numbered from permutation 0 of `perms`, run on one
    /// thread per engine, their nulls appended in permutation order.
    fn permute_several(
        &mut self,
        problem: &ContrastProblem,
        perms: &PermSet,
        range: Range<usize>,
        observed: &[f32],
        spatial: Option<&SpatialJob>,
        progress: &dyn Progress,
    ) -> Result<ContrastNulls> {
        check_range(perms, &range)?;
        let mut engines: Vec<&mut Engine> = std::iter::once(&mut self.engine).chain(&mut self.others).collect();
        let chunk = chunk_size(&engines, perms.len(), spatial.is_some());
        let plan = ChunkPlan::new(&engines, chunk, range.clone());
        let stop = AtomicBool::new(false);
        let plan = &plan;
        let stop = &stop;
        let outcomes: Vec<WorkerOutcome> = std::thread::scope(|scope| {
            let handles: Vec<_> = engines
                .iter_mut()
                .enumerate()
                .map(|(w, engine)| {
                    let engine: &mut Engine = engine;
                    scope.spawn(move || {
                        // Per chunk its maxima; the exceedance counts (exact sums in any
                        // order) summed here, so that a chunk keeps no V-sized vectors.
                        let mut done = Worker::default();
                        while let Some(k) = plan.next(w, stop) {
                            let r = plan.range(k);
                            match permute_contrast(engine, problem, perms, r, observed, spatial, None, progress) {
                                Ok(mut nulls) => {
                                    add_counts(&mut done.counts, std::mem::take(&mut nulls.counts));
                                    add_counts(&mut done.tfce_counts, std::mem::take(&mut nulls.spatial.tfce_counts));
                                    done.permutations += nulls.max_stat.len() as u64;
                                    done.chunks.push((k, nulls));
                                }
                                Err(e) => {
                                    stop.store(true, Ordering::Relaxed);
                                    return Err((k, e));
                                }
                            }
                        }
                        Ok(done)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("an engine's thread panicked")).collect()
        });
        let mut parts = Vec::new();
        let (mut counts, mut tfce_counts) = (vec![0u32; problem.v], Vec::new());
        let mut failed: Option<(usize, EngineError)> = None;
        self.shares.resize(outcomes.len(), 0);
        for (w, o) in outcomes.into_iter().enumerate() {
            match o {
                Ok(done) => {
                    self.shares[w] += done.permutations;
                    add_counts(&mut counts, done.counts);
                    add_counts(&mut tfce_counts, done.tfce_counts);
                    parts.extend(done.chunks);
                }
                // The error of the earliest chunk that failed, whatever the timing.
                Err((k, e)) => {
                    if failed.as_ref().is_none_or(|(f, _)| k < *f) {
                        failed = Some((k, e));
                    }
                }
            }
        }
        if let Some((_, e)) = failed {
            return Err(e);
        }
        // The maxima in permutation order, whichever engine ran them.
        parts.sort_by_key(|(k, _)| *k);
        let mut out = ContrastNulls { max_stat: Vec::with_capacity(range.len()), ..Default::default() };
        for (_, nulls) in parts {
            out.append(nulls);
        }
        out.counts = counts;
        out.spatial.tfce_counts = tfce_counts;
        Ok(out)
    }
}

/// What one engine's thread of a multi-engine run ran.
#[derive(Default)]
struct Worker {
    /// The chunks' nulls by chunk index, without their exceedance counts, which are summed
    /// into `counts` and `tfce_counts`.
    chunks: Vec<(usize, ContrastNulls)>,
    counts: Vec<u32>,
    tfce_counts: Vec<u32>,
    permutations: u64,
}

/// What one engine's thread hands back: what it ran, or the chunk that failed and why.
type WorkerOutcome = std::result::Result<Worker, (usize, EngineError)>;

/// Chunks per engine a multi-engine run aims at over a whole permutation set, so that the
/// engines finish close together.
const CHUNKS_PER_ENGINE: usize = 4;

/// The permutations per chunk of a multi-engine run over a set of `total`: at most the
/// largest batch an engine prefers (at most [`CHUNKS_PER_BATCHES`] spatial batches with
/// spatial statistics), and small enough that each engine gets [`CHUNKS_PER_ENGINE`] chunks
/// of the set. A function of the engines, the set and the statistics only (not of the range
/// run), so that chunks, and which engine computes them, are the same however a run is split.
fn chunk_size(engines: &[&mut Engine], total: usize, spatial: bool) -> usize {
    let mut most = engines.iter().map(|e| e.preferred_batch()).max().unwrap_or(1);
    if spatial {
        most = most.min(CHUNKS_PER_BATCHES * SPATIAL_BATCH);
    }
    most.min(total.div_ceil(CHUNKS_PER_ENGINE * engines.len())).max(1)
}

/// A multi-engine chunk holds at most this many spatial batches.
const CHUNKS_PER_BATCHES: usize = 4;

/// Which engine runs which chunk of a multi-engine run (see [`Scheduler`]).
struct ChunkPlan {
    chunk: usize,
    range: Range<usize>,
    /// The chunk of the identity permutation, for the primary engine (worker 0) first.
    identity: Option<usize>,
    identity_taken: AtomicBool,
    /// Per worker, the queue it draws from: 0 for the GPU engines, 1 for the CPU engines
    /// when both kinds run (everything in 0 otherwise).
    queue_of: Vec<usize>,
    queues: Vec<(Vec<usize>, AtomicUsize)>,
}

impl ChunkPlan {
    fn new(engines: &[&mut Engine], chunk: usize, range: Range<usize>) -> ChunkPlan {
        let is_cpu: Vec<bool> = engines.iter().map(|e| matches!(e, Engine::Cpu(_))).collect();
        let cpus = is_cpu.iter().filter(|c| **c).count();
        let mixed = cpus > 0 && cpus < engines.len();
        let queue_of: Vec<usize> = is_cpu.iter().map(|&c| usize::from(mixed && c)).collect();
        let w = engines.len();
        let chunks = if range.is_empty() { 0..0 } else { range.start / chunk..range.end.div_ceil(chunk) };
        let identity = (range.start == 0 && !range.is_empty()).then_some(0);
        let mut queues: Vec<(Vec<usize>, AtomicUsize)> =
            (0..if mixed { 2 } else { 1 }).map(|_| (Vec::new(), AtomicUsize::new(0))).collect();
        for k in chunks {
            if Some(k) == identity {
                continue;
            }
            // With both kinds, the last `cpus` positions of every w chunks are the CPU's.
            let q = usize::from(mixed && k % w >= w - cpus);
            queues[q].0.push(k);
        }
        ChunkPlan { chunk, range, identity, identity_taken: AtomicBool::new(false), queue_of, queues }
    }

    /// The next chunk worker `w` runs, if any is left and no worker failed.
    fn next(&self, w: usize, stop: &AtomicBool) -> Option<usize> {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        if w == 0 && self.identity.is_some() && !self.identity_taken.swap(true, Ordering::Relaxed) {
            return self.identity;
        }
        let (chunks, next) = &self.queues[self.queue_of[w]];
        chunks.get(next.fetch_add(1, Ordering::Relaxed)).copied()
    }

    /// The permutations of chunk `k` within the range run.
    fn range(&self, k: usize) -> Range<usize> {
        (k * self.chunk).max(self.range.start)..((k + 1) * self.chunk).min(self.range.end)
    }
}

impl Drop for Scheduler {
    /// Says how a multi-engine run shared its permutations.
    fn drop(&mut self) {
        if self.shares.iter().sum::<u64>() == 0 {
            return;
        }
        let engines = std::iter::once(&self.engine).chain(&self.others);
        let each: Vec<String> =
            self.shares.iter().zip(engines).map(|(n, e)| format!("{n} on {}", short_name(e))).collect();
        log::info!("permutations per engine: {}", each.join(", "));
    }
}

/// An engine in a few words: `cpu`, or the adapter and its backend.
fn short_name(e: &Engine) -> String {
    match e {
        Engine::Cpu(_) => "cpu".into(),
        Engine::Gpu(g) => format!("{} ({:?})", g.adapter_info().name, g.adapter_info().backend),
    }
}

/// The observed statistic map of `problem` on `engine` (the identity permutation).
pub fn observed_map(engine: &mut Engine, problem: &ContrastProblem, kind: PermKind) -> Result<Vec<f32>> {
    // The identity as permutation 0 of a set of the run's kind, so that the engine forms it
    // with the same product (tables or matrix) as the permutations: then permutation 0
    // reproduces the observed map bit for bit and counts itself.
    let labels: Vec<u32> = (0..problem.n as u32).collect();
    let identity = PermSet::generate(problem.n, kind, &labels, 1, 0).map_err(EngineError::Invalid)?;
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
    let observed = observed_map(&mut engine, problem, perms.kind)?;
    let nulls = permute_contrast(&mut engine, problem, perms, 0..perms.len(), &observed, None, None, &())?;
    Ok(ContrastResult { observed, null: nulls.max_stat, counts: nulls.counts })
}

/// The nulls of one contrast over permutations `range` of `perms` on `engine`, with the spatial
/// statistics of `spatial` reduced by `reducer` (configured for it) when given, else on the
/// CPU. See the module docs for the overlap and the fallbacks.
#[allow(clippy::too_many_arguments)]
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
    check_range(perms, &range)?;
    let mut out =
        ContrastNulls { max_stat: Vec::with_capacity(range.len()), counts: vec![0u32; v], ..Default::default() };
    let range = take_identity(&mut out, range, observed, spatial, progress)?;
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
        add_counts(&mut self.counts, later.counts);
        self.spatial.append(later.spatial);
    }

    fn add_batch(&mut self, res: &crate::BatchResult) {
        self.max_stat.extend_from_slice(&res.max_stat);
        for (c, x) in self.counts.iter_mut().zip(&res.exceed) {
            *c += x;
        }
    }
}

/// Where `range` starts at the identity (permutation 0), its member of every null goes
/// into `out` from the observed maps, on the host; returns the rest of the range, for the
/// engine. The observed map is computed in f64 (`voxflip_stats::observed`) and the engines'
/// permutation maps in f32, so the engine's own identity map could fall a rounding below
/// the observed one and fail to count itself; the identity's member is the observed map's
/// by definition: its maximum, an exceedance at every voxel, its TFCE and cluster maxima.
fn take_identity(
    out: &mut ContrastNulls,
    range: Range<usize>,
    observed: &[f32],
    spatial: Option<&SpatialJob>,
    progress: &dyn Progress,
) -> Result<Range<usize>> {
    if range.start != 0 || range.is_empty() {
        return Ok(range);
    }
    // As the kernels' maxima and comparisons: NaN never wins and never counts.
    out.max_stat.push(observed.iter().fold(f32::NEG_INFINITY, |a, &x| if x > a { x } else { a }));
    for (c, &o) in out.counts.iter_mut().zip(observed) {
        *c += !o.is_nan() as u32;
    }
    if let Some(job) = spatial {
        let mut part = SpatialNull::default();
        if job.tfce.is_some() {
            let own;
            let tfce = match job.tfce_observed {
                Some(t) => t,
                None => {
                    let mut t = vec![0f32; observed.len()];
                    job.tfce_map(observed, &mut Workspace::new(), &mut t)
                        .map_err(|e| EngineError::Invalid(e.to_string()))?;
                    own = t;
                    &own[..]
                }
            };
            part.tfce_max.push(tfce.iter().copied().fold(0f32, f32::max));
            if job.tfce_observed.is_some() {
                part.tfce_counts = tfce.iter().map(|t| !t.is_nan() as u32).collect();
            }
        }
        let clusters = SpatialJob { tfce: None, tfce_observed: None, ..*job };
        let mut cl = SpatialNull::default();
        if !observed.is_empty() {
            clusters.reduce(observed, observed.len(), &mut cl).map_err(|e| EngineError::Invalid(e.to_string()))?;
        }
        part.extent_max = cl.extent_max;
        part.mass_max = cl.mass_max;
        out.spatial.append(part);
    }
    progress.advance(1);
    Ok(1..range.end)
}

/// A caller's range of `perms` that is not one is invalid.
fn check_range(perms: &PermSet, range: &Range<usize>) -> Result<()> {
    if range.start > range.end || range.end > perms.len() {
        return Err(EngineError::Invalid(format!(
            "permutations {}..{} of a set of {}",
            range.start,
            range.end,
            perms.len()
        )));
    }
    Ok(())
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
    let smoothing = engine.smoothing().cloned();
    let mut cpu = Engine::Cpu(CpuEngine::new());
    cpu.set_smoothing(smoothing);
    cpu.prepare(problem)?;
    *engine = cpu;
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
