//! The whole analysis of one dataset: for each contrast, the partitioned model, the
//! observed map, every permutation through the scheduler, p-values, and the outputs.
use crate::error::{Error, Result};
use crate::options::AnalysisOptions;
use crate::outputs::{write_cluster_tables, ClusterTableJob, Graphs, Outputs};
use crate::progress::Bar;
use crate::summary::{null_quantiles, ContrastSummary, ExchangeBlocks, RunReport, SpatialSummary};
use std::time::Instant;
use voxflip_engines::{make_engine, Scheduler};
use voxflip_io::Dataset;
use voxflip_stats::spatial::{observed_cluster_values, Connectivity, SpatialJob};
use voxflip_stats::{
    corrected_p, identical_row_labels, uncorrected_p, with_identity_floor, Blocks, Contrast, ContrastModel, Design,
    MaxStatNull, PScale, PermKind, PermSet, StatKind,
};

/// Why a contrast's permutations are of `kind` (for stderr and the sidecar).
fn reason_for(kind: PermKind, opts: &AnalysisOptions) -> String {
    if kind == opts.perm_kind {
        opts.perm_reason.clone()
    } else {
        "sign flips: the contrast tests the mean (the constant is not in its nuisance), which reordering rows cannot test".into()
    }
}

/// What each contrast's permutations exchange, and the one set of each kind used.
struct PermutationPlan {
    /// Per contrast.
    kinds: Vec<PermKind>,
    sets: Vec<(PermKind, PermSet)>,
}

/// What each contrast's permutations exchange, and one permutation set per kind used.
///
/// The kind asked for, except that a contrast testing the constant (a mean; see
/// ContrastModel::tests_constant) is sign-flipped when the kind was not the user's choice:
/// randomise's one-sample rule, made per contrast. Every set comes from the same seed, so
/// the draws agree where the kinds do. Each set is announced on stderr.
fn permutation_sets(
    design: &Design,
    models: &[ContrastModel],
    opts: &AnalysisOptions,
    n: usize,
) -> Result<PermutationPlan> {
    let kinds: Vec<PermKind> = models
        .iter()
        .map(|m| {
            if opts.flip_constant_contrasts && opts.perm_kind == PermKind::Permute && m.tests_constant() {
                PermKind::SignFlip
            } else {
                opts.perm_kind
            }
        })
        .collect();
    let blocks = opts.blocks.clone().unwrap_or_else(|| Blocks::single(n));
    let within = match &opts.blocks {
        Some(b) if b.whole => format!(" of {} whole exchangeability blocks", b.len()),
        Some(b) => format!(" within {} exchangeability blocks", b.len()),
        None => String::new(),
    };
    let mut sets: Vec<(PermKind, PermSet)> = Vec::new();
    for &kind in &kinds {
        if sets.iter().any(|(k, _)| *k == kind) {
            continue;
        }
        let labels = if kind.permutes() { identical_row_labels(&design.m) } else { vec![0; n] };
        let perms =
            PermSet::generate_in_blocks(n, kind, &labels, &blocks, opts.n_perm, opts.seed).map_err(Error::usage)?;
        {
            let nperm = perms.len();
            let what = match kind {
                PermKind::SignFlip => "sign flips",
                PermKind::Permute => "permutations",
                PermKind::Both => "permutations with sign flips",
            };
            let for_which = if kinds.iter().all(|&k| k == kind) {
                String::new()
            } else {
                let names: Vec<&str> = design
                    .contrasts
                    .iter()
                    .zip(&kinds)
                    .filter(|(_, &k)| k == kind)
                    .map(|(c, _)| c.name.as_str())
                    .collect();
                format!(" for {}", names.join(", "))
            };
            if perms.exhaustive {
                log::info!("exhaustive: all {nperm} distinct {what}{within}{for_which} (asked for {})", opts.n_perm);
            } else {
                log::info!("{nperm} random {what}{within}{for_which} (seed {}); {}", opts.seed, reason_for(kind, opts));
            }
        }
        sets.push((kind, perms));
    }
    Ok(PermutationPlan { kinds, sets })
}

/// One contrast to run: its model, the permutations it uses and why.
struct ContrastPlan<'a> {
    model: &'a ContrastModel,
    label: String,
    kind: PermKind,
    perms: &'a PermSet,
}

/// What all the contrasts of a run share: where their outputs go and the engines.
struct RunState<'a> {
    ds: &'a Dataset,
    opts: &'a AnalysisOptions,
    outputs: Outputs<'a>,
    graphs: Graphs<'a>,
    scheduler: Scheduler,
    tables: Vec<ClusterTableJob>,
    /// Where TFCE / cluster statistics ran (None without them).
    spatial_backend: Option<String>,
}

/// Run all contrasts of `design` on `ds`; write outputs under `prefix`. Nothing is written
/// unless everything succeeds (outputs are renamed into place at the end).
pub fn run(ds: &Dataset, design: &Design, opts: &AnalysisOptions, prefix: &str) -> Result<RunReport> {
    let start = Instant::now();
    let outputs = Outputs::new(prefix, ds, opts.scale)?;
    let models: Vec<ContrastModel> = design
        .contrasts
        .iter()
        .map(|c| ContrastModel::new(&design.m, c).map_err(Error::usage))
        .collect::<Result<_>>()?;
    let PermutationPlan { kinds, sets } = permutation_sets(design, &models, opts, ds.n)?;
    let set_of = |kind: PermKind| -> &PermSet { &sets.iter().find(|(k, _)| *k == kind).expect("generated above").1 };
    let plans: Vec<ContrastPlan> = models
        .iter()
        .zip(&kinds)
        .enumerate()
        .map(|(ci, (model, &kind))| ContrastPlan {
            model,
            label: design.contrast_labels.get(ci).cloned().unwrap_or_default(),
            kind,
            perms: set_of(kind),
        })
        .collect();
    let total: usize = plans.iter().map(|c| c.perms.len()).sum();
    let scheduler = Scheduler::new(make_engine(&opts.engine)?, opts.engine.gpu.spatial);
    let mut state =
        RunState { ds, opts, outputs, graphs: Graphs::new(ds), scheduler, tables: Vec::new(), spatial_backend: None };
    let progress = Bar::new(total as u64, opts.quiet);
    let mut summaries = Vec::new();
    for (contrast, plan) in design.contrasts.iter().zip(&plans) {
        summaries.push(run_contrast(&mut state, contrast, plan, &progress)?);
    }
    let RunState { mut outputs, mut graphs, scheduler, tables, spatial_backend, .. } = state;
    write_cluster_tables(&mut outputs, &mut graphs, &tables)?;
    progress.finish();
    let first = &plans[0];
    let mut report = RunReport {
        version: env!("CARGO_PKG_VERSION"),
        command_line: opts.command_line.clone(),
        input: ds.source.display().to_string(),
        n_images: ds.n,
        n_voxels: ds.v,
        seed: opts.seed,
        permutations: first.perms.len(),
        permutations_requested: opts.n_perm,
        exhaustive: first.perms.exhaustive,
        permutation_kind: first.kind,
        permutation_reason: reason_for(first.kind, opts),
        exchangeability_blocks: opts.blocks.as_ref().map(|b| ExchangeBlocks { count: b.len(), whole: b.whole }),
        backend: scheduler.describe(),
        engine_options: opts.engine.clone(),
        spatial_backend,
        p_values: match opts.scale {
            PScale::OneMinusP => "1 - p (randomise convention)",
            PScale::NegLog10 => "-log10(p)",
        },
        contrasts: summaries,
        seconds_total: start.elapsed().as_secs_f64(),
        outputs: Vec::new(),
    };
    let json_path = outputs.path("voxflip", ".json");
    report.outputs = outputs.planned().into_iter().chain(std::iter::once(json_path)).collect();
    let json = serde_json::to_string_pretty(&report).map_err(|e| Error::usage(format!("provenance record: {e}")))?;
    outputs.text("voxflip", ".json", &json)?;
    outputs.commit()?;
    Ok(report)
}

/// One contrast: the observed map, every permutation (with its spatial statistics), the
/// p-values, and its outputs.
fn run_contrast(
    st: &mut RunState,
    contrast: &Contrast,
    plan: &ContrastPlan,
    progress: &Bar,
) -> Result<ContrastSummary> {
    let t0 = Instant::now();
    let (ds, opts) = (st.ds, st.opts);
    let problem = plan.model.problem(&ds.y, ds.v);
    st.scheduler.prepare(&problem)?;
    let observed = st.scheduler.observed_map(&problem)?;
    let (extent_thr, mass_thr) = match contrast.kind {
        StatKind::T => (opts.spatial.t_extent, opts.spatial.t_mass),
        StatKind::F => (opts.spatial.f_extent, opts.spatial.f_mass),
    };
    let cluster_conn = opts.spatial.cluster_conn.unwrap_or(Connectivity::C26);
    let wants_clusters = extent_thr.is_some() || mass_thr.is_some();
    if let Some(o) = opts.spatial.tfce {
        st.graphs.ensure(o.params.conn);
    }
    if wants_clusters {
        st.graphs.ensure(cluster_conn);
    }
    let mut job = SpatialJob { tfce: None, tfce_observed: None, cluster_graph: None, extent_thr, mass_thr };
    if let Some(o) = opts.spatial.tfce {
        // randomise: dh = max(observed) / 100, fixed for every permutation.
        let dh = o.step.unwrap_or(observed.iter().copied().fold(0f32, f32::max) / 100.0);
        job.tfce = Some((st.graphs.get(o.params.conn).expect("built above"), o, dh));
    }
    if wants_clusters {
        job.cluster_graph = st.graphs.get(cluster_conn);
    }
    let wants_spatial = job.tfce.is_some() || wants_clusters;
    let on_gpu = if wants_spatial { st.scheduler.place_spatial(&job)? } else { None };
    let tfce_obs = if job.tfce.is_some() { st.scheduler.tfce_observed(&job, &observed)? } else { Vec::new() };
    if job.tfce.is_some() {
        job.tfce_observed = Some(&tfce_obs);
    }
    if let Some(name) = &on_gpu {
        st.spatial_backend = Some(format!("gpu: {name}"));
    } else if wants_spatial {
        st.spatial_backend.get_or_insert_with(|| format!("cpu ({} threads)", rayon::current_num_threads()));
    }
    let nulls = st.scheduler.permute(&problem, plan.perms, &observed, wants_spatial.then_some(&job), progress)?;
    let seconds = t0.elapsed().as_secs_f64();
    let nperm = plan.perms.len();
    let name = &contrast.name;
    let out = &mut st.outputs;
    let mut spatial = Vec::new();
    if job.tfce.is_some() {
        let tnull = MaxStatNull::new(with_identity_floor(nulls.spatial.tfce_max.clone(), &tfce_obs));
        out.map(&format!("tfce_{name}"), &tfce_obs)?;
        let pc: Vec<f64> = corrected_p(&tfce_obs, &tnull);
        out.p_map(&format!("tfce_corrp_{name}"), &pc)?;
        if opts.uncorrp {
            out.p_map(&format!("tfce_p_{name}"), &uncorrected_p(&nulls.spatial.tfce_counts, nperm))?;
        }
        if opts.save_null {
            out.null(&format!("null_tfce_{name}"), &tnull.values)?;
        }
        spatial.push(SpatialSummary::of("tfce", &tnull, &pc));
        st.tables.push(table_job("tfce", name, &observed, pc, None));
    }
    let clusters = [
        ("clustere", extent_thr, false, &nulls.spatial.extent_max),
        ("clusterm", mass_thr, true, &nulls.spatial.mass_max),
    ];
    for (what, thr, is_mass, values) in clusters {
        let (Some(thr), Some(g)) = (thr, job.cluster_graph) else { continue };
        let obs_vals = observed_cluster_values(g, &observed, thr, is_mass);
        let cnull = MaxStatNull::new(with_identity_floor(values.clone(), &obs_vals));
        let pc: Vec<f64> = obs_vals.iter().map(|&x| if x.is_nan() { 1.0 } else { cnull.corrected_p(x) }).collect();
        // randomise writes 0 outside clusters (1 - p); -log10 p is 0 there too.
        let m: Vec<f32> =
            pc.iter().zip(&obs_vals).map(|(&p, &x)| if x.is_nan() { 0.0 } else { opts.scale.apply(p) }).collect();
        out.map(&format!("{what}_corrp_{name}"), &m)?;
        if opts.save_null {
            out.null(&format!("null_{what}_{name}"), &cnull.values)?;
        }
        spatial.push(SpatialSummary::of(what, &cnull, &pc));
        st.tables.push(table_job(what, name, &observed, pc, Some(thr)));
    }
    let null = MaxStatNull::new(with_identity_floor(nulls.max_stat, &observed));
    out.map(name, &observed)?;
    let pcorr = corrected_p(&observed, &null);
    if opts.vox_corrp {
        out.p_map(&format!("vox_corrp_{name}"), &pcorr)?;
    }
    if opts.uncorrp {
        out.p_map(&format!("vox_p_{name}"), &uncorrected_p(&nulls.counts, nperm))?;
    }
    if opts.save_null {
        out.null(&format!("null_{name}"), &null.values)?;
    }
    let summary = ContrastSummary {
        name: name.clone(),
        label: plan.label.clone(),
        kind: contrast.kind,
        dof: plan.model.dof,
        permutation_kind: plan.kind,
        permutation_reason: reason_for(plan.kind, opts),
        permutations: nperm,
        exhaustive: plan.perms.exhaustive,
        max_stat: observed.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        fwe05_threshold: null.threshold(0.05),
        voxels_fwe05: pcorr.iter().filter(|&&p| p <= 0.05).count(),
        null_quantiles: null_quantiles(&null),
        seconds,
        gflops: problem.flops_per_perm() * nperm as f64 / seconds / 1e9,
        spatial,
    };
    if opts.vox_corrp {
        st.tables.push(table_job("vox", name, &observed, pcorr, None));
    }
    Ok(summary)
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
