//! The whole analysis of one dataset: for each contrast, the partitioned model, the
//! observed map, the permutations through the scheduler (all of them, one shard's, or none
//! when shards are merged), p-values, and the outputs. A run checkpoints its state as it
//! goes, and resumes from it with --resume (see `state`).
use crate::error::{Error, Result};
use crate::options::{AnalysisOptions, Distribution};
use crate::outputs::{write_cluster_tables, ClusterTableJob, Graphs, Outputs};
use crate::permutations::{reason_for, PermutationPlan};
use crate::progress::Bar;
use crate::state::{checkpoint_file, identity, ContrastState, NullState, Shard};
use crate::summary::{
    null_quantiles, utc_now, ContrastSummary, DesignRecord, ExchangeBlocks, Grid, Histogram, RedundantColumn,
    RunReport, SpatialSummary, Timings,
};
use std::ops::Range;
use std::path::PathBuf;
use std::time::Instant;
use voxflip_engines::{make_engines, ContrastNulls, Scheduler};
use voxflip_io::Dataset;
use voxflip_stats::spatial::{observed_cluster_values, Connectivity, SpatialJob};
use voxflip_stats::{
    corrected_p, glm_maps, uncorrected_p, voxelwise_problem, with_identity_floor, ConfoundMethod, Contrast,
    ContrastModel, ContrastProblem, Design, GlmMaps, MaxStatNull, PScale, PermKind, PermSet, StatKind,
    VarianceSmoothing, VoxelwiseEvs,
};

/// One contrast to run: its model, the permutations it uses and why.
struct ContrastPlan<'a> {
    model: &'a ContrastModel,
    label: String,
    kind: PermKind,
    perms: &'a PermSet,
    /// The contrast just before this one when this is its mirror (see [`mirrors`]).
    mirror_of: Option<usize>,
    /// With voxelwise regressors (--vxl): the design as given, this contrast and the
    /// regressors, from which each voxel's own partition is built.
    voxelwise: Option<(&'a nalgebra::DMatrix<f64>, &'a Contrast, &'a VoxelwiseEvs)>,
    /// Whether the rank-deficient voxels of this contrast were reported.
    said: std::sync::atomic::AtomicBool,
}

/// Per contrast, the contrast just before it when it is that one's mirror: both t contrasts,
/// the weights exactly negated, the same permutation set (`set_of`, per contrast). A
/// mirror's problem is its partner's negated ([`mirrored`]), so that its maps are exactly
/// the partner's negated and the two can share one product ([`Scheduler::permute_mirrored`]); a mirror is no partner itself.
fn mirrors(design: &Design, set_of: &[usize]) -> Vec<Option<usize>> {
    let mut of: Vec<Option<usize>> = vec![None; design.contrasts.len()];
    for ci in 1..design.contrasts.len() {
        let (a, b) = (&design.contrasts[ci - 1], &design.contrasts[ci]);
        let t = a.kind == StatKind::T && b.kind == StatKind::T;
        let negated = a.c.shape() == b.c.shape() && a.c.iter().zip(b.c.iter()).all(|(x, y)| *y == -*x);
        if t && negated && set_of[ci - 1] == set_of[ci] && of[ci - 1].is_none() {
            of[ci] = Some(ci - 1);
        }
    }
    of
}

/// The problem of a contrast's mirror: `p` with Q's first column negated (E, ss and the
/// degrees of freedom unchanged), so that u_1 and with it t change sign exactly. The
/// mirror's own partition would give the same statistics only up to rounding (its nuisance
/// basis comes from another factorisation).
fn mirrored(mut p: ContrastProblem) -> ContrastProblem {
    for row in p.qbasis.chunks_exact_mut(p.q) {
        row[0] = -row[0];
    }
    if let Some(bases) = p.voxel_qbasis.as_mut() {
        for row in bases.chunks_exact_mut(p.q) {
            row[0] = -row[0];
        }
    }
    p
}

/// A contrast's engine problem and its observed map.
struct ContrastInput {
    problem: ContrastProblem,
    /// The observed statistic (pseudo-t under `-v`), computed in f64 from the data and
    /// rounded to f32 (`voxflip_stats::observed`), as randomise computes it.
    observed: Vec<f32>,
}

/// The problem and observed map of plan `plan` under `method`: the shared partition's, or
/// with voxelwise regressors every voxel's own (a voxel whose design is rank deficient gets
/// 0, said once).
fn own_input(
    plan: &ContrastPlan,
    ds: &Dataset,
    method: ConfoundMethod,
    smoothing: Option<&VarianceSmoothing>,
) -> ContrastInput {
    let kind = plan.model.kind;
    let Some((m, contrast, evs)) = plan.voxelwise else {
        let observed = plan.model.observed_fit(&ds.y, ds.v, method).map(kind, smoothing);
        return ContrastInput { problem: plan.model.problem_for(&ds.y, ds.v, method), observed };
    };
    let vp = voxelwise_problem(m, plan.model, contrast, evs, &ds.y, ds.v, method);
    if vp.rank_deficient > 0 && !plan.said.swap(true, std::sync::atomic::Ordering::Relaxed) {
        log::warn!(
            "--vxf: {} of {} voxels have a rank-deficient design for {} (the voxelwise regressor \
             is a combination of other columns there); their statistic is 0",
            vp.rank_deficient,
            ds.v,
            contrast.name
        );
    }
    ContrastInput { observed: vp.observed.map(kind, smoothing), problem: vp.problem }
}

/// The problem and observed map of contrast `ci` under confound `method` (-U): its own, or
/// its partner's negated when it is a mirror.
fn input_of(
    plans: &[ContrastPlan],
    ci: usize,
    ds: &Dataset,
    method: ConfoundMethod,
    smoothing: Option<&VarianceSmoothing>,
) -> ContrastInput {
    match plans[ci].mirror_of {
        Some(a) => mirror_input(own_input(&plans[a], ds, method, smoothing)),
        None => own_input(&plans[ci], ds, method, smoothing),
    }
}

/// The mirror's input: the problem [`mirrored`], the observed map negated (0 stays 0).
fn mirror_input(i: ContrastInput) -> ContrastInput {
    let observed = i.observed.iter().map(|&x| if x == 0.0 { 0.0 } else { -x }).collect();
    ContrastInput { problem: mirrored(i.problem), observed }
}

/// What all the contrasts of a run share: where their outputs go and the engines.
struct RunState<'a> {
    ds: &'a Dataset,
    opts: &'a AnalysisOptions,
    outputs: Outputs<'a>,
    graphs: Graphs<'a>,
    /// None when merging (no permutations run).
    scheduler: Option<Scheduler>,
    tables: Vec<ClusterTableJob>,
    /// Where TFCE / cluster statistics ran (None without them).
    spatial_backend: Option<String>,
    checkpoints: Checkpointer,
}

/// What a run ends with.
pub enum Outcome {
    /// The outputs were written.
    Report(Box<RunReport>),
    /// A shard's state was written.
    Shard { file: PathBuf, shard: Shard, permutations: Vec<Range<usize>>, seconds: f64, backend: String },
}

/// Run all contrasts of `design` on `ds`; write outputs under `prefix` (or, for a shard,
/// its state). Nothing is written unless everything succeeds (outputs are renamed into
/// place at the end).
pub fn run(ds: &Dataset, design: &Design, opts: &AnalysisOptions, prefix: &str) -> Result<Outcome> {
    let start = Instant::now();
    let outputs = Outputs::new(prefix, ds, opts.scale)?;
    let models: Vec<ContrastModel> = design
        .contrasts
        .iter()
        .map(|c| ContrastModel::new(&design.m, c).map_err(Error::usage))
        .collect::<Result<_>>()?;
    let id = identity(ds, design, opts);
    let (shard, merged) = match &opts.distribution {
        Distribution::Whole => (Shard::WHOLE, None),
        Distribution::Shard(s) => (*s, None),
        Distribution::Merge(m) => {
            if m.state.identity != id {
                return Err(Error::usage(format!(
                    "the shards of {} were computed from other inputs or options than these \
                     (data, mask, design, contrasts, permutation or TFCE/cluster options, seed or version)",
                    m.shards[0].file.display()
                )));
            }
            (Shard::WHOLE, Some(&m.state))
        }
    };
    let shard_file = shard.file(prefix);
    let ckpt_path = checkpoint_file(prefix, shard);
    if let (Distribution::Shard(_), true) = (&opts.distribution, opts.resume) {
        if let Ok(done) = NullState::read(&shard_file) {
            if done.identity == id && done.shard == shard {
                log::info!("{}: this shard is already complete", shard_file.display());
                return Ok(shard_outcome(shard_file, &done, start));
            }
        }
    }
    let resumed = if opts.resume && merged.is_none() { read_checkpoint(&ckpt_path, &id, shard)? } else { None };
    if !opts.resume && merged.is_none() && ckpt_path.exists() {
        log::info!("{}: a checkpoint of an earlier run; starting afresh (--resume continues it)", ckpt_path.display());
    }
    // Opened before any permutation, so that a bad --atlas fails in the first second.
    let atlases = match opts.distribution {
        Distribution::Shard(_) => Vec::new(),
        _ => crate::labels::open_atlases(&opts.report.atlases)?,
    };
    if let Some(bg) = opts.report.background.as_ref().filter(|_| opts.report.enabled) {
        voxflip_io::resolve_image(bg)?;
    }
    let PermutationPlan { kinds, set_of, sets } = crate::permutations::plan(design, &models, opts, ds.n)?;
    let glm = opts.glm_output.then(|| glm_output_maps(ds, design)).transpose()?;
    let mirror_of = mirrors(design, &set_of);
    let plans: Vec<ContrastPlan> = models
        .iter()
        .zip(&kinds)
        .enumerate()
        .map(|(ci, (model, &kind))| ContrastPlan {
            model,
            label: design.contrast_labels.get(ci).cloned().unwrap_or_default(),
            kind,
            perms: &sets[set_of[ci]],
            mirror_of: mirror_of[ci],
            voxelwise: opts.voxelwise.as_deref().map(|evs| (&design.m, &design.contrasts[ci], evs)),
            said: std::sync::atomic::AtomicBool::new(false),
        })
        .collect();
    if opts.permout {
        check_permout(ds, design, &plans, opts)?;
    }
    let scheduler = match merged {
        Some(_) => None,
        None => {
            let mut s = Scheduler::with_engines(make_engines(&opts.engine)?, opts.engine.gpu.spatial);
            if let Some(sigma) = opts.variance_smoothing {
                let smoothing = VarianceSmoothing::new(ds.dims, &ds.voxels, ds.pixdim.map(f32::abs), sigma)
                    .map_err(|e| Error::input(&ds.source, format!("-v {sigma}: {e}")))?;
                s.set_smoothing(Some(std::sync::Arc::new(smoothing)));
            }
            Some(s)
        }
    };
    let backend = match (&scheduler, merged) {
        (Some(s), _) => s.describe(),
        (None, Some(m)) => m.backend.clone(),
        (None, None) => unreachable!("a scheduler unless merging"),
    };
    let checkpoints = Checkpointer {
        path: ckpt_path,
        every: opts.checkpoints.seconds,
        step: opts.checkpoints.permutations,
        last: Instant::now(),
        template: NullState {
            identity: id,
            shard,
            command_line: opts.command_line.clone(),
            backend: backend.clone(),
            spatial_backend: None,
            contrasts: Vec::new(),
        },
    };
    let mut state = RunState {
        ds,
        opts,
        outputs,
        graphs: Graphs::new(ds),
        scheduler,
        tables: Vec::new(),
        spatial_backend: merged.and_then(|m| m.spatial_backend.clone()),
        checkpoints,
    };
    // Permutations this run computes: none when merging, and not those a checkpoint holds.
    let remaining: usize = match merged {
        Some(_) => 0,
        None => plans
            .iter()
            .enumerate()
            .map(|(ci, p)| {
                let r = shard.range(p.perms.len());
                let done = resumed.as_ref().and_then(|s| s.contrasts.get(ci)).map_or(r.start, |c| c.range.end);
                r.end.saturating_sub(done)
            })
            .sum(),
    };
    let progress = Bar::new(remaining as u64, opts.quiet);
    let (setup_seconds, contrasts_start) = (start.elapsed().as_secs_f64(), Instant::now());
    if let Some(g) = &glm {
        write_glm_maps(&mut state.outputs, g)?;
    }
    let mut summaries = Vec::new();
    let mut states: Vec<ContrastState> = Vec::new();
    // A mirror's state, computed with its partner's.
    let mut mirror_done: Option<ContrastState> = None;
    for (ci, (contrast, plan)) in design.contrasts.iter().zip(&plans).enumerate() {
        let resumed_of = |ci: usize| {
            let name = &design.contrasts[ci].name;
            resumed.as_ref().and_then(|s| s.contrasts.get(ci)).filter(|c| &c.name == name)
        };
        let cs = match (merged, mirror_done.take()) {
            (Some(m), _) => {
                let c = m.contrasts.get(ci).filter(|c| c.name == contrast.name && c.range == (0..plan.perms.len()));
                c.cloned().ok_or_else(|| Error::usage(format!("the shards hold no complete {}", contrast.name)))?
            }
            (None, Some(cs)) => cs,
            (None, None) => {
                let range = shard.range(plan.perms.len());
                let from = resumed_of(ci);
                // With its mirror next, one product serves both, unless a checkpoint of a
                // run without sharing left the two at different points.
                let share = opts.share_contrasts
                    && !opts.permout
                    && plans.get(ci + 1).is_some_and(|p| p.mirror_of == Some(ci))
                    && state.scheduler.as_ref().is_some_and(Scheduler::mirrors)
                    && from.map(|c| &c.range) == resumed_of(ci + 1).map(|c| &c.range);
                if share {
                    let pair = [contrast, &design.contrasts[ci + 1]];
                    let [a, b] = compute_pair(
                        &mut state,
                        pair,
                        &plans,
                        ci,
                        range,
                        from.zip(resumed_of(ci + 1)),
                        &states,
                        &progress,
                    )?;
                    mirror_done = Some(b);
                    a
                } else {
                    compute_contrast(&mut state, contrast, &plans, ci, range, from, &states, &progress)?
                }
            }
        };
        if !matches!(opts.distribution, Distribution::Shard(_)) {
            summaries.push(finish_contrast(&mut state, contrast, plan, &cs)?);
        }
        states.push(cs);
    }
    progress.finish();
    let (contrasts_seconds, outputs_start) = (contrasts_start.elapsed().as_secs_f64(), Instant::now());
    let RunState { mut outputs, mut graphs, tables, spatial_backend, checkpoints, .. } = state;
    let mut full = checkpoints.template;
    full.spatial_backend = spatial_backend.clone();
    full.contrasts = states;
    if let Distribution::Shard(_) = opts.distribution {
        full.write(&shard_file)?;
        let _ = std::fs::remove_file(&checkpoints.path);
        return Ok(shard_outcome(shard_file, &full, start));
    }
    write_cluster_tables(&mut outputs, &mut graphs, &tables, &atlases)?;
    if opts.keep_state {
        let path = Shard::WHOLE.file(prefix);
        full.write(&outputs.temp_for(&path))?;
    }
    if opts.report.enabled {
        // The report's default background, kept so that `voxflip report` can redraw it.
        outputs.map_full("mean", &ds.mean_image())?;
    }
    let first = &plans[0];
    let mut report = RunReport {
        version: env!("CARGO_PKG_VERSION").to_string(),
        date: utc_now(),
        command_line: opts.command_line.clone(),
        input: ds.source.display().to_string(),
        mask: ds.mask_source.as_ref().map(|p| p.display().to_string()),
        grid: Grid { dims: ds.dims, voxel_mm: ds.pixdim.map(f32::abs) },
        voxels_dropped: if ds.constant_dropped > 0 {
            vec![crate::summary::DroppedVoxels {
                count: ds.constant_dropped,
                reason: "constant across all images (randomise's rule; --norcmask keeps them)".into(),
            }]
        } else {
            Vec::new()
        },
        design: DesignRecord {
            columns: design.column_names.clone(),
            matrix: (0..design.m.nrows()).map(|r| design.m.row(r).iter().copied().collect()).collect(),
            blocks: opts.blocks.as_ref().map(|b| b.of_rows().to_vec()),
            rank: Some(voxflip_stats::rank(&design.m)),
            redundant_columns: design
                .column_dependencies()
                .into_iter()
                .map(|d| RedundantColumn {
                    column: design.column_names[d.column].clone(),
                    combination_of: d.of.iter().map(|&k| design.column_names[k].clone()).collect(),
                })
                .collect(),
        },
        logp: opts.scale == PScale::NegLog10,
        report: opts.report.clone(),
        n_images: ds.n,
        n_voxels: ds.v,
        seed: opts.seed,
        permutations: first.perms.len(),
        permutations_requested: opts.n_perm,
        exhaustive: first.perms.exhaustive,
        permutation_kind: first.kind,
        permutation_reason: reason_for(first.kind, opts),
        exchangeability_blocks: opts.blocks.as_ref().map(|b| ExchangeBlocks { count: b.len(), whole: b.whole }),
        variance_smoothing_mm: opts.variance_smoothing,
        backend,
        engine_options: opts.engine.clone(),
        spatial_backend,
        p_values: match opts.scale {
            PScale::OneMinusP => "1 - p (randomise convention)",
            PScale::NegLog10 => "-log10(p)",
        }
        .into(),
        contrasts: summaries,
        seconds_total: 0.0,
        timings: Timings {
            read_inputs: ds.read_seconds,
            setup: setup_seconds,
            contrasts: contrasts_seconds,
            outputs: 0.0,
        },
        shards: match &opts.distribution {
            Distribution::Merge(m) => Some(m.shards.clone()),
            _ => None,
        },
        voxelwise_evs: opts
            .voxelwise_sources
            .iter()
            .map(|(column, file)| crate::summary::VoxelwiseRecord { column: *column, file: file.display().to_string() })
            .collect(),
        outputs: Vec::new(),
    };
    let json_path = outputs.path("voxflip", ".json");
    let report_path = crate::report::default_path(prefix);
    report.outputs = outputs
        .planned()
        .into_iter()
        .chain(std::iter::once(json_path))
        .chain(opts.report.enabled.then(|| report_path.clone()))
        .collect();
    // The maps still being written in the background belong to the outputs' time.
    outputs.wait()?;
    report.timings.outputs = outputs_start.elapsed().as_secs_f64();
    report.seconds_total = start.elapsed().as_secs_f64();
    let json = serde_json::to_string_pretty(&report).map_err(|e| Error::usage(format!("provenance record: {e}")))?;
    outputs.sidecar(&json)?;
    if opts.report.enabled {
        // From the outputs just written (still under their temporary names, so that the
        // report joins the one commit), as `voxflip report PREFIX` makes it.
        let page = crate::report::build_from(&outputs.temporaries_prefix(), prefix, &opts.report)?;
        outputs.text("report", ".html", &page)?;
    }
    outputs.commit()?;
    if merged.is_none() {
        let _ = std::fs::remove_file(&checkpoints.path);
    }
    Ok(Outcome::Report(Box::new(report)))
}

fn shard_outcome(file: PathBuf, state: &NullState, start: Instant) -> Outcome {
    Outcome::Shard {
        file,
        shard: state.shard,
        permutations: state.contrasts.iter().map(|c| c.range.clone()).collect(),
        seconds: start.elapsed().as_secs_f64(),
        backend: state.backend.clone(),
    }
}

/// The checkpoint at `path` for a run of identity `id` (shard `shard`), if there is one.
fn read_checkpoint(path: &std::path::Path, id: &str, shard: Shard) -> Result<Option<NullState>> {
    if !path.exists() {
        log::info!("{}: no checkpoint; starting from the first permutation", path.display());
        return Ok(None);
    }
    let st = NullState::read(path)?;
    if st.identity != id || st.shard != shard {
        return Err(Error::input(
            path,
            "the checkpoint of another run (its inputs or options differ): remove it, or run without --resume",
        ));
    }
    let done: usize = st.contrasts.iter().map(|c| c.range.len()).sum();
    log::info!("{}: resuming after {done} permutations", path.display());
    Ok(Some(st))
}

/// Writes a run's checkpoint between stretches of permutations, at most every `every`
/// seconds.
struct Checkpointer {
    path: PathBuf,
    every: Option<f64>,
    /// Permutations per stretch (None: the default).
    step: Option<usize>,
    last: Instant,
    /// The state's header fields; contrasts filled in at each checkpoint.
    template: NullState,
}

impl Checkpointer {
    /// Permutations between the points where a checkpoint may be written: a few of the
    /// engine's batches, so that the overlap of the engine and the spatial statistics is
    /// broken rarely; the whole range without checkpoints.
    fn stretch(&self, batch: usize) -> usize {
        match self.every {
            None => usize::MAX,
            Some(_) => self.step.unwrap_or((4 * batch).max(1024)).max(1),
        }
    }

    fn maybe_write(
        &mut self,
        done: &[ContrastState],
        current: &[&ContrastState],
        spatial: &Option<String>,
    ) -> Result<()> {
        let Some(every) = self.every else { return Ok(()) };
        if self.last.elapsed().as_secs_f64() < every {
            return Ok(());
        }
        let mut st = self.template.clone();
        st.spatial_backend = spatial.clone();
        st.contrasts = done.iter().cloned().chain(current.iter().map(|&c| c.clone())).collect();
        st.write(&self.path)?;
        self.last = Instant::now();
        Ok(())
    }
}

/// A contrast's observed maps and spatial job, ready for its permutations.
struct Setup<'g> {
    observed: Vec<f32>,
    /// Its TFCE step from its own observed map; `tfce_observed` is set where it is used.
    job: SpatialJob<'g>,
    tfce_obs: Vec<f32>,
    wants_spatial: bool,
}

impl Setup<'_> {
    /// The job with its observed TFCE map, for the scheduler (None without spatial work).
    fn job(&self) -> Option<SpatialJob<'_>> {
        let tfce_observed = self.job.tfce.is_some().then_some(&self.tfce_obs[..]);
        self.wants_spatial.then_some(SpatialJob { tfce_observed, ..self.job })
    }

    /// The state of a contrast none of whose permutations `range.start..` ran yet.
    fn fresh_state(&self, contrast: &Contrast, range: &Range<usize>, v: usize) -> ContrastState {
        ContrastState {
            name: contrast.name.clone(),
            range: range.start..range.start,
            seconds: 0.0,
            observed: self.observed.clone(),
            tfce_observed: self.tfce_obs.clone(),
            nulls: ContrastNulls {
                counts: vec![0; v],
                spatial: voxflip_stats::spatial::SpatialNull {
                    tfce_counts: if self.job.tfce.is_some() { vec![0; v] } else { Vec::new() },
                    ..Default::default()
                },
                ..Default::default()
            },
        }
    }
}

/// The graphs `contrast`'s spatial statistics need, built once per run.
fn ensure_graphs(graphs: &mut Graphs, opts: &AnalysisOptions, contrast: &Contrast) {
    let (extent_thr, mass_thr) = cluster_thresholds(opts, contrast.kind);
    if let Some(o) = opts.spatial.tfce {
        graphs.ensure_tfce(o.params.conn, opts.spatial.tfce_edge);
    }
    if extent_thr.is_some() || mass_thr.is_some() {
        graphs.ensure(opts.spatial.cluster_conn.unwrap_or(Connectivity::C26));
    }
}

/// Prepare `problem` and set up its contrast: the observed map (`observed`, or the
/// checkpoint's when resumed), the spatial job and where it runs (recorded in
/// `spatial_backend`), the observed TFCE map.
#[allow(clippy::too_many_arguments)]
fn set_up<'g>(
    scheduler: &mut Scheduler,
    graphs: &'g Graphs,
    spatial_backend: &mut Option<String>,
    opts: &AnalysisOptions,
    contrast: &Contrast,
    problem: &ContrastProblem,
    observed: Vec<f32>,
    resumed: Option<&ContrastState>,
) -> Result<Setup<'g>> {
    scheduler.prepare(problem)?;
    let observed = match resumed {
        Some(r) => r.observed.clone(),
        None => observed,
    };
    let (extent_thr, mass_thr) = cluster_thresholds(opts, contrast.kind);
    let wants_clusters = extent_thr.is_some() || mass_thr.is_some();
    let mut job = SpatialJob { tfce: None, tfce_observed: None, cluster_graph: None, extent_thr, mass_thr };
    if let Some(o) = opts.spatial.tfce {
        // randomise: dh = max(observed) / 100, fixed for every permutation.
        let dh = o.step.unwrap_or(observed.iter().copied().fold(0f32, f32::max) / 100.0);
        job.tfce = Some((graphs.tfce().expect("ensure_graphs built it"), o, dh));
    }
    if wants_clusters {
        job.cluster_graph = graphs.get(opts.spatial.cluster_conn.unwrap_or(Connectivity::C26));
    }
    let wants_spatial = job.tfce.is_some() || wants_clusters;
    let on_gpu = if wants_spatial { scheduler.place_spatial(&job)? } else { None };
    let tfce_obs = match (job.tfce.is_some(), resumed) {
        (false, _) => Vec::new(),
        (true, Some(r)) => r.tfce_observed.clone(),
        (true, None) => scheduler.tfce_observed(&job, &observed)?,
    };
    if let Some(name) = &on_gpu {
        *spatial_backend = Some(format!("gpu: {name}"));
    } else if wants_spatial {
        spatial_backend.get_or_insert_with(|| format!("cpu ({} threads)", rayon::current_num_threads()));
    }
    Ok(Setup { observed, job, tfce_obs, wants_spatial })
}

/// One contrast's permutations `range` (continuing `resumed`, the state a checkpoint held
/// for it): the observed maps, then the permutations in stretches, checkpointing between.
#[allow(clippy::too_many_arguments)]
fn compute_contrast(
    st: &mut RunState,
    contrast: &Contrast,
    plans: &[ContrastPlan],
    ci: usize,
    range: Range<usize>,
    resumed: Option<&ContrastState>,
    done: &[ContrastState],
    progress: &Bar,
) -> Result<ContrastState> {
    if let Some(r) = resumed.filter(|r| r.range == range) {
        return Ok(r.clone());
    }
    let t0 = Instant::now();
    let (ds, opts) = (st.ds, st.opts);
    let smoothing = st.scheduler.as_ref().and_then(|s| s.engine().smoothing().cloned());
    let ContrastInput { problem, observed } = input_of(plans, ci, ds, opts.confound, smoothing.as_deref());
    ensure_graphs(&mut st.graphs, opts, contrast);
    let scheduler = st.scheduler.as_mut().expect("a scheduler unless merging");
    let setup = set_up(scheduler, &st.graphs, &mut st.spatial_backend, opts, contrast, &problem, observed, resumed)?;
    let job = setup.job();
    let mut cs = match resumed {
        Some(r) => r.clone(),
        None => setup.fresh_state(contrast, &range, ds.v),
    };
    let stretch = st.checkpoints.stretch(scheduler.engine().preferred_batch());
    while cs.range.end < range.end {
        let t = Instant::now();
        let next = cs.range.end.saturating_add(stretch).min(range.end);
        let part = scheduler.permute(
            &problem,
            plans[ci].perms,
            cs.range.end..next,
            &setup.observed,
            job.as_ref(),
            progress,
        )?;
        cs.nulls.append(part);
        cs.range.end = next;
        cs.seconds += t.elapsed().as_secs_f64();
        if cs.range.end < range.end {
            st.checkpoints.maybe_write(done, &[&cs], &st.spatial_backend)?;
        }
    }
    if st.opts.permout {
        let perms = plans[ci].perms;
        crate::permout::write_permuted_maps(
            scheduler,
            &problem,
            perms,
            &setup.observed,
            job.as_ref(),
            &contrast.name,
            &mut st.outputs,
        )?;
    }
    // The observed map and its set-up count towards the contrast's time once.
    if resumed.is_none() {
        cs.seconds = t0.elapsed().as_secs_f64();
    }
    Ok(cs)
}

/// Contrast `ci` and its mirror `ci + 1` ([`mirrors`]) from one product per batch
/// ([`Scheduler::permute_mirrored`]), continuing `resumed` (both at the same point): their
/// states as [`compute_contrast`] gives them one after the other, each with half the time.
#[allow(clippy::too_many_arguments)]
fn compute_pair(
    st: &mut RunState,
    contrasts: [&Contrast; 2],
    plans: &[ContrastPlan],
    ci: usize,
    range: Range<usize>,
    resumed: Option<(&ContrastState, &ContrastState)>,
    done: &[ContrastState],
    progress: &Bar,
) -> Result<[ContrastState; 2]> {
    if let Some((a, b)) = resumed.filter(|(a, _)| a.range == range) {
        return Ok([a.clone(), b.clone()]);
    }
    let t0 = Instant::now();
    let (ds, opts) = (st.ds, st.opts);
    log::info!(
        "{} and {} share one product (the second's weights are the first's negated)",
        contrasts[0].name,
        contrasts[1].name
    );
    let smoothing = st.scheduler.as_ref().and_then(|s| s.engine().smoothing().cloned());
    let ContrastInput { problem, observed } = own_input(&plans[ci], ds, opts.confound, smoothing.as_deref());
    let mirror = mirror_input(ContrastInput { problem: problem.clone(), observed: observed.clone() });
    for c in contrasts {
        ensure_graphs(&mut st.graphs, opts, c);
    }
    let scheduler = st.scheduler.as_mut().expect("a scheduler unless merging");
    let backend = &mut st.spatial_backend;
    let [ra, rb] = [resumed.map(|r| r.0), resumed.map(|r| r.1)];
    // The mirror first, so that the partner's problem stays prepared for the product.
    let sb = set_up(scheduler, &st.graphs, backend, opts, contrasts[1], &mirror.problem, mirror.observed, rb)?;
    let sa = set_up(scheduler, &st.graphs, backend, opts, contrasts[0], &problem, observed, ra)?;
    let jobs = [sa.job(), sb.job()];
    let mut cs = match resumed {
        Some((a, b)) => [a.clone(), b.clone()],
        None => [sa.fresh_state(contrasts[0], &range, ds.v), sb.fresh_state(contrasts[1], &range, ds.v)],
    };
    let stretch = st.checkpoints.stretch(scheduler.engine().preferred_batch());
    while cs[0].range.end < range.end {
        let t = Instant::now();
        let next = cs[0].range.end.saturating_add(stretch).min(range.end);
        let spatial = match &jobs {
            [Some(a), Some(b)] => Some([a, b]),
            _ => None,
        };
        let observed = [&sa.observed[..], &sb.observed[..]];
        let parts = scheduler.permute_mirrored(
            &problem,
            plans[ci].perms,
            cs[0].range.end..next,
            observed,
            spatial,
            progress,
        )?;
        let half = t.elapsed().as_secs_f64() / 2.0;
        for (c, part) in cs.iter_mut().zip(parts) {
            c.nulls.append(part);
            c.range.end = next;
            c.seconds += half;
        }
        if next < range.end {
            st.checkpoints.maybe_write(done, &[&cs[0], &cs[1]], &st.spatial_backend)?;
        }
    }
    if resumed.is_none() {
        let half = t0.elapsed().as_secs_f64() / 2.0;
        cs[0].seconds = half;
        cs[1].seconds = half;
    }
    Ok(cs)
}

/// The cluster-forming thresholds of a contrast of `kind` (randomise -c/-C for t, -F/-S for F).
fn cluster_thresholds(opts: &AnalysisOptions, kind: StatKind) -> (Option<f32>, Option<f32>) {
    match kind {
        StatKind::T => (opts.spatial.t_extent, opts.spatial.t_mass),
        StatKind::F => (opts.spatial.f_extent, opts.spatial.f_mass),
    }
}

/// One contrast's p-values and outputs from its state over every permutation.
fn finish_contrast(
    st: &mut RunState,
    contrast: &Contrast,
    plan: &ContrastPlan,
    cs: &ContrastState,
) -> Result<ContrastSummary> {
    let opts = st.opts;
    let nulls = &cs.nulls;
    let observed = &cs.observed;
    let tfce_obs = &cs.tfce_observed;
    let nperm = plan.perms.len();
    let name = &contrast.name;
    let (extent_thr, mass_thr) = cluster_thresholds(opts, contrast.kind);
    let cluster_conn = opts.spatial.cluster_conn.unwrap_or(Connectivity::C26);
    if extent_thr.is_some() || mass_thr.is_some() {
        st.graphs.ensure(cluster_conn);
    }
    let cluster_graph = st.graphs.get(cluster_conn);
    let out = &mut st.outputs;
    let mut spatial = Vec::new();
    if opts.spatial.tfce.is_some() {
        let tnull = MaxStatNull::new(with_identity_floor(nulls.spatial.tfce_max.clone(), tfce_obs));
        out.map(&format!("tfce_{name}"), tfce_obs)?;
        let pc: Vec<f64> = corrected_p(tfce_obs, &tnull);
        out.p_map(&format!("tfce_corrp_{name}"), &pc)?;
        if opts.uncorrp {
            out.p_map(&format!("tfce_p_{name}"), &uncorrected_p(&nulls.spatial.tfce_counts, nperm))?;
        }
        if opts.save_null {
            out.null(&format!("tfce_corrp_{name}"), &tnull.values)?;
        }
        spatial.push(SpatialSummary::of("tfce", None, &tnull, tfce_obs, &pc));
        st.tables.push(table_job("tfce", name, observed, pc, None));
    }
    let clusters = [
        ("clustere", extent_thr, false, &nulls.spatial.extent_max),
        ("clusterm", mass_thr, true, &nulls.spatial.mass_max),
    ];
    for (what, thr, is_mass, values) in clusters {
        let (Some(thr), Some(g)) = (thr, cluster_graph) else { continue };
        let obs_vals = observed_cluster_values(g, observed, thr, is_mass);
        let cnull = MaxStatNull::new(with_identity_floor(values.clone(), &obs_vals));
        let pc: Vec<f64> = obs_vals.iter().map(|&x| if x.is_nan() { 1.0 } else { cnull.corrected_p(x) }).collect();
        // randomise writes 0 outside clusters (1 - p); -log10 p is 0 there too.
        let m: Vec<f32> =
            pc.iter().zip(&obs_vals).map(|(&p, &x)| if x.is_nan() { 0.0 } else { opts.scale.apply(p) }).collect();
        out.map(&format!("{what}_corrp_{name}"), &m)?;
        if opts.raw_cluster_maps {
            // randomise -R: each voxel holds its cluster's extent (or mass), 0 outside clusters.
            out.map(&format!("{what}_{name}"), &crate::permout::raw_cluster_map(&obs_vals))?;
        }
        if opts.save_null {
            out.null(&format!("{what}_corrp_{name}"), &cnull.values)?;
        }
        spatial.push(SpatialSummary::of(what, Some(thr), &cnull, &obs_vals, &pc));
        st.tables.push(table_job(what, name, observed, pc, Some(thr)));
    }
    let null = MaxStatNull::new(with_identity_floor(nulls.max_stat.clone(), observed));
    out.map(name, observed)?;
    let pcorr = corrected_p(observed, &null);
    if opts.vox_corrp {
        out.p_map(&format!("vox_corrp_{name}"), &pcorr)?;
    }
    if opts.uncorrp {
        out.p_map(&format!("vox_p_{name}"), &uncorrected_p(&nulls.counts, nperm))?;
    }
    if opts.save_null {
        out.null(&format!("vox_corrp_{name}"), &null.values)?;
    }
    if opts.perm_vectors {
        out.text(&format!("perm_{name}"), ".txt", &crate::permutations::vectors_text(plan.perms))?;
    }
    let m = plan.model;
    let q = if opts.confound == ConfoundMethod::Kennedy { m.s } else { m.q };
    let flops_per_perm = 2.0 * q as f64 * m.n as f64 * st.ds.v as f64;
    let max_stat = observed.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let summary = ContrastSummary {
        name: name.clone(),
        label: plan.label.clone(),
        kind: contrast.kind,
        dof: opts.confound.dof(m),
        permutation_kind: plan.kind,
        permutation_reason: reason_for(plan.kind, opts),
        permutations: nperm,
        exhaustive: plan.perms.exhaustive,
        max_stat,
        fwe05_threshold: null.threshold(0.05),
        voxels_fwe05: pcorr.iter().filter(|&&p| p <= 0.05).count(),
        null_quantiles: null_quantiles(&null),
        null_histogram: Histogram::of(&null.values, max_stat, null.threshold(0.05)),
        // One column of `c` per row of the contrast as design.con writes it.
        weights: (0..contrast.c.ncols()).map(|j| contrast.c.column(j).iter().copied().collect()).collect(),
        seconds: cs.seconds,
        gflops: flops_per_perm * nperm as f64 / cs.seconds.max(1e-9) / 1e9,
        spatial,
    };
    if opts.vox_corrp {
        st.tables.push(table_job("vox", name, observed, pcorr, None));
    }
    Ok(summary)
}

/// --permout's conditions: a whole run from the start, and maps within its bounds.
fn check_permout(ds: &Dataset, design: &Design, plans: &[ContrastPlan], opts: &AnalysisOptions) -> Result<()> {
    if !matches!(opts.distribution, Distribution::Whole) || opts.resume {
        return Err(Error::usage(
            "--permout writes the maps as the permutations run: not with --shard, --resume or merge",
        ));
    }
    let maps: usize = design
        .contrasts
        .iter()
        .zip(plans)
        .map(|(c, p)| {
            let (extent, mass) = cluster_thresholds(opts, c.kind);
            p.perms.len() * crate::permout::maps_per_permutation((opts.spatial.tfce.is_some(), extent, mass))
        })
        .sum();
    crate::permout::check_size(maps, ds.dims.iter().product())
}

/// randomise's --glm_output maps of the unpermuted data: the whole design, its t contrasts.
fn glm_output_maps(ds: &Dataset, design: &Design) -> Result<GlmMaps> {
    let t: Vec<Vec<f64>> = design
        .contrasts
        .iter()
        .filter(|c| c.kind == StatKind::T)
        .map(|c| c.c.column(0).iter().copied().collect())
        .collect();
    glm_maps(&design.m, &t, &ds.y, ds.v).map_err(Error::usage)
}

/// `{prefix}_glm_pe`, `_glm_cope`, `_glm_varcope` (4D, one volume per design column or t
/// contrast) and `_glm_sigmasqr`, as randomise names them.
fn write_glm_maps(out: &mut Outputs, g: &GlmMaps) -> Result<()> {
    out.volumes("glm_pe", &g.pe)?;
    if !g.cope.is_empty() {
        out.volumes("glm_cope", &g.cope)?;
        out.volumes("glm_varcope", &g.varcope)?;
    }
    out.map("glm_sigmasqr", &g.sigmasqr)
}

/// A corrected map whose clusters go into the tables.
fn table_job(
    correction: &'static str,
    contrast: &str,
    stat: &[f32],
    corrp: Vec<f64>,
    threshold: Option<f32>,
) -> ClusterTableJob {
    ClusterTableJob { correction, contrast: contrast.to_string(), stat: stat.to_vec(), corrp, threshold }
}
