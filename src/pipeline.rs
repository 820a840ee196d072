//! The whole analysis of one dataset: for each contrast, the partitioned model, the
//! observed map, every permutation through the scheduler, p-values, and the outputs.
use crate::error::{Error, Result};
use crate::options::AnalysisOptions;
use crate::outputs::{write_cluster_tables, ClusterTableJob, Graphs, Outputs};
use crate::progress::Bar;
use crate::summary::{ContrastSummary, ExchangeBlocks, RunReport, SpatialSummary};
use std::time::Instant;
use voxflip_engines::{make_engine, Scheduler};
use voxflip_io::Dataset;
use voxflip_stats::spatial::{observed_cluster_values, Connectivity, SpatialJob};
use voxflip_stats::{
    corrected_p, identical_row_labels, uncorrected_p, with_identity_floor, Blocks, ContrastModel, Design, MaxStatNull,
    PScale, PermKind, PermSet, StatKind,
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

/// Run all contrasts of `design` on `ds`; write outputs under `prefix`. Nothing is written
/// unless everything succeeds (outputs are renamed into place at the end).
pub fn run(ds: &Dataset, design: &Design, opts: &AnalysisOptions, prefix: &str) -> Result<RunReport> {
    let start = Instant::now();
    let mut outputs = Outputs::new(prefix, ds, opts.scale)?;
    let models: Vec<ContrastModel> = design
        .contrasts
        .iter()
        .map(|c| ContrastModel::new(&design.m, c).map_err(Error::usage))
        .collect::<Result<_>>()?;
    let PermutationPlan { kinds, sets } = permutation_sets(design, &models, opts, ds.n)?;
    let reason_of = |kind: PermKind| reason_for(kind, opts);
    let set_of = |ci: usize| -> &PermSet { &sets.iter().find(|(k, _)| *k == kinds[ci]).expect("generated above").1 };
    let total: usize = (0..kinds.len()).map(|ci| set_of(ci).len()).sum();
    let mut scheduler = Scheduler::new(make_engine(&opts.engine)?, opts.engine.gpu.spatial);
    let mut graphs = Graphs::new(ds);
    let mut tables: Vec<ClusterTableJob> = Vec::new();
    let progress = Bar::new(total as u64, opts.quiet);
    let mut summaries = Vec::new();
    let mut spatial_backend: Option<String> = None;
    for (ci, contrast) in design.contrasts.iter().enumerate() {
        let t0 = Instant::now();
        let model = &models[ci];
        let perms = set_of(ci);
        let nperm = perms.len();
        let problem = model.problem(&ds.y, ds.v);
        scheduler.prepare(&problem)?;
        let observed = scheduler.observed_map(&problem)?;
        let name = &contrast.name;
        // Spatial statistics for this contrast, if asked for.
        let sp = &opts.spatial;
        let (extent_thr, mass_thr) = match contrast.kind {
            StatKind::T => (sp.t_extent, sp.t_mass),
            StatKind::F => (sp.f_extent, sp.f_mass),
        };
        let cluster_conn = sp.cluster_conn.unwrap_or(Connectivity::C26);
        if let Some(o) = sp.tfce {
            graphs.ensure(o.params.conn);
        }
        if extent_thr.is_some() || mass_thr.is_some() {
            graphs.ensure(cluster_conn);
        }
        let mut job = SpatialJob { tfce: None, tfce_observed: None, cluster_graph: None, extent_thr, mass_thr };
        if let Some(o) = sp.tfce {
            let obs_max = observed.iter().copied().fold(0f32, f32::max);
            // randomise: dh = max(observed) / 100, fixed for every permutation.
            let dh = o.step.unwrap_or(obs_max / 100.0);
            job.tfce = Some((graphs.get(o.params.conn).expect("built above"), o, dh));
        }
        if extent_thr.is_some() || mass_thr.is_some() {
            job.cluster_graph = graphs.get(cluster_conn);
        }
        let wants_spatial = sp.tfce.is_some() || extent_thr.is_some() || mass_thr.is_some();
        let on_gpu = if wants_spatial { scheduler.place_spatial(&job)? } else { None };
        let tfce_obs = if job.tfce.is_some() { scheduler.tfce_observed(&job, &observed)? } else { vec![0f32; ds.v] };
        if job.tfce.is_some() {
            job.tfce_observed = Some(&tfce_obs);
        }
        if let Some(name) = &on_gpu {
            spatial_backend = Some(format!("gpu: {name}"));
        } else if wants_spatial {
            spatial_backend.get_or_insert_with(|| format!("cpu ({} threads)", rayon::current_num_threads()));
        }
        let nulls = scheduler.permute(&problem, perms, &observed, wants_spatial.then_some(&job), &progress)?;
        let seconds = t0.elapsed().as_secs_f64();
        let null = MaxStatNull::new(with_identity_floor(nulls.max_stat, &observed));
        let snull = nulls.spatial;
        let mut spatial_summary = Vec::new();
        if job.tfce.is_some() {
            let tnull = MaxStatNull::new(with_identity_floor(snull.tfce_max.clone(), &tfce_obs));
            outputs.map(&format!("tfce_{name}"), &tfce_obs)?;
            let pc: Vec<f64> = corrected_p(&tfce_obs, &tnull);
            outputs.p_map(&format!("tfce_corrp_{name}"), &pc)?;
            if opts.uncorrp {
                outputs.p_map(&format!("tfce_p_{name}"), &uncorrected_p(&snull.tfce_counts, nperm))?;
            }
            if opts.save_null {
                outputs.null(&format!("null_tfce_{name}"), &tnull.values)?;
            }
            spatial_summary.push(SpatialSummary::of("tfce", &tnull, &pc));
            tables.push(ClusterTableJob {
                correction: "tfce",
                contrast: name.clone(),
                stat: observed.clone(),
                corrp: pc,
                threshold: None,
            });
        }
        for (what, thr, is_mass, values) in
            [("clustere", extent_thr, false, &snull.extent_max), ("clusterm", mass_thr, true, &snull.mass_max)]
        {
            let (Some(thr), Some(g)) = (thr, job.cluster_graph) else { continue };
            let obs_vals = observed_cluster_values(g, &observed, thr, is_mass);
            let cnull = MaxStatNull::new(with_identity_floor(values.clone(), &obs_vals));
            let pc: Vec<f64> = obs_vals.iter().map(|&x| if x.is_nan() { 1.0 } else { cnull.corrected_p(x) }).collect();
            // randomise writes 0 outside clusters (1 - p); -log10 p is 0 there too.
            let m: Vec<f32> =
                pc.iter().zip(&obs_vals).map(|(&p, &x)| if x.is_nan() { 0.0 } else { opts.scale.apply(p) }).collect();
            outputs.map(&format!("{what}_corrp_{name}"), &m)?;
            if opts.save_null {
                outputs.null(&format!("null_{what}_{name}"), &cnull.values)?;
            }
            spatial_summary.push(SpatialSummary::of(what, &cnull, &pc));
            tables.push(ClusterTableJob {
                correction: what,
                contrast: name.clone(),
                stat: observed.clone(),
                corrp: pc,
                threshold: Some(thr),
            });
        }
        outputs.map(name, &observed)?;
        let pcorr = corrected_p(&observed, &null);
        if opts.vox_corrp {
            outputs.p_map(&format!("vox_corrp_{name}"), &pcorr)?;
        }
        if opts.uncorrp {
            outputs.p_map(&format!("vox_p_{name}"), &uncorrected_p(&nulls.counts, nperm))?;
        }
        if opts.save_null {
            outputs.null(&format!("null_{name}"), &null.values)?;
        }
        let th = null.threshold(0.05);
        summaries.push(ContrastSummary {
            name: name.clone(),
            label: design.contrast_labels.get(ci).cloned().unwrap_or_default(),
            kind: contrast.kind,
            dof: model.dof,
            permutation_kind: kinds[ci],
            permutation_reason: reason_of(kinds[ci]),
            permutations: nperm,
            exhaustive: perms.exhaustive,
            max_stat: observed.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            fwe05_threshold: th,
            voxels_fwe05: pcorr.iter().filter(|&&p| p <= 0.05).count(),
            null_quantiles: [0.5, 0.9, 0.95, 0.99, 1.0].iter().map(|&q| (q, null.quantile(q))).collect(),
            seconds,
            gflops: problem.flops_per_perm() * nperm as f64 / seconds / 1e9,
            spatial: spatial_summary,
        });
        if opts.vox_corrp {
            tables.push(ClusterTableJob {
                correction: "vox",
                contrast: name.clone(),
                stat: observed,
                corrp: pcorr,
                threshold: None,
            });
        }
    }
    write_cluster_tables(&mut outputs, &mut graphs, &tables)?;
    progress.finish();
    let mut report = RunReport {
        version: env!("CARGO_PKG_VERSION"),
        command_line: opts.command_line.clone(),
        input: ds.source.display().to_string(),
        n_images: ds.n,
        n_voxels: ds.v,
        seed: opts.seed,
        permutations: set_of(0).len(),
        permutations_requested: opts.n_perm,
        exhaustive: set_of(0).exhaustive,
        permutation_kind: kinds[0],
        permutation_reason: reason_of(kinds[0]),
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
