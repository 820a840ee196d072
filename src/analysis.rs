//! The whole analysis of one dataset: for each contrast, the partitioned model, the
//! observed map, every permutation in batches through an engine, p-values, and outputs.
use crate::data::Dataset;
use crate::design::Design;
use crate::engine::cpu::CpuEngine;
use crate::engine::gpu::spatial::GpuSpatial;
use crate::engine::{ContrastProblem, Engine, StatKind};
use crate::error::{Error, Result};
use crate::glm::{identical_row_labels, ContrastModel};
use crate::inference::{corrected_p, uncorrected_p, MaxStatNull, PScale};
use crate::io::OutputSet;
use crate::perm::{Blocks, PermKind, PermSet};
use crate::spatial::{Connectivity, MaskGraph};
use crate::spatial_inference::{observed_cluster_values, SpatialJob, SpatialNull, SpatialOptions};
use serde::Serialize;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Which engine runs the permutations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A hardware GPU when one exists, else the CPU engine.
    Auto,
    /// The GPU engine (a software adapter such as lavapipe is accepted when asked for).
    Gpu,
    /// The multithreaded CPU engine.
    Cpu,
}

/// Everything about a run that is not the data or the design.
#[derive(Clone, Debug)]
pub struct AnalysisOptions {
    /// Permutations requested (randomise -n; 0 = all). Exhaustive when there are at most
    /// this many distinct ones.
    pub n_perm: usize,
    pub seed: u64,
    pub perm_kind: PermKind,
    /// Why that kind was chosen (for stderr and the sidecar).
    pub perm_reason: String,
    /// Exchangeability blocks (randomise -e, --permuteBlocks); None: every row exchangeable.
    pub blocks: Option<Blocks>,
    /// When `perm_kind` is Permute by default (not the user's choice): contrasts that test
    /// the constant (a mean, see ContrastModel::tests_constant) are sign-flipped instead.
    pub flip_constant_contrasts: bool,
    /// Write voxelwise FWE-corrected p maps (randomise -x).
    pub vox_corrp: bool,
    /// Write uncorrected p maps (--uncorrp).
    pub uncorrp: bool,
    pub scale: PScale,
    /// Also write the whole max-statistic null as text.
    pub save_null: bool,
    pub quiet: bool,
    pub backend: Backend,
    pub adapter: Option<String>,
    /// The command line, recorded in the sidecar.
    pub command_line: Vec<String>,
    /// TFCE and cluster inference.
    pub spatial: SpatialOptions,
}

/// The exchangeability blocks of a run, as the sidecar records them.
#[derive(Clone, Debug, Serialize)]
pub struct ExchangeBlocks {
    /// Number of blocks.
    pub count: usize,
    /// Whole blocks exchanged (--permuteBlocks) rather than rows within blocks.
    pub whole: bool,
}

/// What a run found, for the user's summary on stderr.
#[derive(Clone, Debug, Serialize)]
pub struct ContrastSummary {
    pub name: String,
    pub label: String,
    pub kind: StatKind,
    pub dof: f64,
    /// What this contrast's permutations exchanged, and why.
    pub permutation_kind: PermKind,
    pub permutation_reason: String,
    /// Number of permutations (the identity included) and whether they were all of them.
    pub permutations: usize,
    pub exhaustive: bool,
    pub max_stat: f32,
    pub fwe05_threshold: f32,
    pub voxels_fwe05: usize,
    pub null_quantiles: Vec<(f64, f32)>,
    pub seconds: f64,
    pub gflops: f64,
    /// TFCE / cluster nulls: statistic, quantiles, FWE 0.05 threshold, voxels significant.
    pub spatial: Vec<SpatialSummary>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SpatialSummary {
    pub statistic: &'static str,
    pub null_quantiles: Vec<(f64, f32)>,
    pub fwe05_threshold: f32,
    pub voxels_fwe05: usize,
}

fn spatial_entry(statistic: &'static str, null: &MaxStatNull, pc: &[f64]) -> SpatialSummary {
    SpatialSummary {
        statistic,
        null_quantiles: [0.5, 0.9, 0.95, 0.99, 1.0].iter().map(|&q| (q, null.quantile(q))).collect(),
        fwe05_threshold: null.threshold(0.05),
        voxels_fwe05: pc.iter().filter(|&&p| p <= 0.05).count(),
    }
}

fn null_text(values: &[f32]) -> String {
    values.iter().map(|x| format!("{x}\n")).collect()
}

/// (correction, contrast name, stat map, corrected p per voxel, cluster-forming threshold)
type ClusterTableJob = (&'static str, String, Vec<f32>, Vec<f64>, f32);

/// The index of the mask graph with connectivity `conn`, built on first use.
fn graph_for(graphs: &mut Vec<(Connectivity, MaskGraph)>, ds: &Dataset, conn: Connectivity) -> usize {
    if let Some(i) = graphs.iter().position(|(c, _)| *c == conn) {
        return i;
    }
    graphs.push((conn, MaskGraph::new(ds.dims, ds.voxels.clone(), conn)));
    graphs.len() - 1
}

/// `{out}_clusters_{contrast}.tsv` (clusters of each corrected map) and
/// `{out}_lmax_{contrast}.tsv` (local maxima within them), like FSL's `cluster` tool.
/// Voxelwise and TFCE maps: clusters of voxels with corrected p <= 0.05 (26-connected);
/// cluster-extent/mass maps: the clusters formed at the user's threshold.
fn write_cluster_tables(outputs: &mut OutputSet, ds: &Dataset, prefix: &str, jobs: &[ClusterTableJob], graphs: &[(Connectivity, MaskGraph)]) -> Result<()> {
    let g26;
    let g = match graphs.iter().find(|(c, _)| *c == Connectivity::C26) {
        Some((_, g)) => g,
        None => {
            g26 = MaskGraph::new(ds.dims, ds.voxels.clone(), Connectivity::C26);
            &g26
        }
    };
    let mut by_contrast: Vec<(String, String, String)> = Vec::new();
    for (what, name, stat, pc, thr) in jobs {
        let (map, t): (Vec<f32>, f32) = if thr.is_finite() {
            (stat.clone(), *thr)
        } else {
            (stat.iter().zip(pc).map(|(&x, &p)| if p <= 0.05 { x } else { f32::NEG_INFINITY }).collect(), f32::MIN)
        };
        let pcf: Vec<f32> = pc.iter().map(|&p| p as f32).collect();
        let table = crate::spatial::cluster_table(g, &map, t, &pcf, &ds.affine, ds.voxel_volume());
        let lmax = crate::spatial::local_maxima_table(g, &map, t, &pcf, &ds.affine, 3, 8.0);
        let entry = match by_contrast.iter_mut().find(|e| &e.0 == name) {
            Some(e) => e,
            None => {
                by_contrast.push((name.clone(), String::new(), String::new()));
                by_contrast.last_mut().unwrap()
            }
        };
        prefix_rows(&mut entry.1, what, &table);
        prefix_rows(&mut entry.2, what, &lmax);
    }
    for (name, table, lmax) in by_contrast {
        outputs.write_text(&out_path(prefix, &format!("clusters_{name}"), ".tsv"), &table)?;
        outputs.write_text(&out_path(prefix, &format!("lmax_{name}"), ".tsv"), &lmax)?;
    }
    Ok(())
}

/// Append a TSV produced by the table functions with a leading `correction` column
/// (the header once).
fn prefix_rows(out: &mut String, what: &str, tsv: &str) {
    let mut lines = tsv.lines();
    let header = lines.next().unwrap_or("");
    if out.is_empty() {
        out.push_str("correction\t");
        out.push_str(header);
        out.push('\n');
    }
    for l in lines {
        out.push_str(what);
        out.push('\t');
        out.push_str(l);
        out.push('\n');
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub version: &'static str,
    pub command_line: Vec<String>,
    pub input: String,
    pub n_images: usize,
    pub n_voxels: usize,
    pub seed: u64,
    pub permutations: usize,
    pub permutations_requested: usize,
    pub exhaustive: bool,
    pub permutation_kind: PermKind,
    pub permutation_reason: String,
    /// Exchangeability blocks (-e), if any.
    pub exchangeability_blocks: Option<ExchangeBlocks>,
    pub backend: String,
    /// Where TFCE / cluster statistics ran (None without them).
    pub spatial_backend: Option<String>,
    pub p_values: &'static str,
    pub contrasts: Vec<ContrastSummary>,
    pub seconds_total: f64,
    pub outputs: Vec<PathBuf>,
}

/// Choose the engine for `backend`.
///
/// - `Cpu`: the CPU engine.
/// - `Gpu`: the GPU engine on the best adapter (or the one `adapter` names), software
///   adapters such as lavapipe included; an error if none can be opened.
/// - `Auto`: the GPU engine on a hardware adapter when one can be opened, else the CPU
///   engine (software adapters are never chosen here: the CPU engine is much faster).
///
/// Says which engine runs on stderr unless `quiet`; `Engine::describe` records it in the
/// sidecar.
pub fn make_engine(backend: Backend, adapter: Option<&str>, quiet: bool) -> Result<Box<dyn Engine>> {
    use crate::engine::gpu::{AdapterChoice, GpuEngine};
    let name = adapter.map(str::to_string);
    let engine: Box<dyn Engine> = match backend {
        Backend::Cpu => Box::new(CpuEngine::new()),
        Backend::Gpu => Box::new(GpuEngine::new(&AdapterChoice { name, allow_software: true })?),
        Backend::Auto => match GpuEngine::new(&AdapterChoice { name, allow_software: false }) {
            Ok(g) => Box::new(g),
            Err(e) => {
                if !quiet {
                    if crate::engine::gpu::hardware_adapter_available() {
                        // A hardware GPU exists but could not be used: say why.
                        let why = e.to_string();
                        eprintln!("voxflip: {}; using the CPU engine", why.trim_end_matches("; use --backend cpu"));
                    } else {
                        eprintln!(
                            "voxflip: no hardware GPU adapter; using the CPU engine \
                             (--backend gpu runs the shaders on a software adapter such as lavapipe)"
                        );
                    }
                }
                Box::new(CpuEngine::new())
            }
        },
    };
    if !quiet {
        eprintln!("voxflip: engine: {}", engine.describe());
    }
    Ok(engine)
}

/// Make `slot` a GPU spatial reducer configured for `job` when the engine wants spatial
/// statistics on its device (a hardware adapter, see `Engine::spatial_adapter`) and the job
/// can run there (not exact TFCE). Returns the adapter's name, or None to reduce on the CPU
/// (saying why on stderr when the GPU was wanted but failed).
pub fn gpu_spatial_for(engine: &mut dyn Engine, job: &SpatialJob, slot: &mut Option<GpuSpatial>, quiet: bool) -> Option<String> {
    let choice = engine.spatial_adapter()?;
    if job.tfce.is_some_and(|(_, o, _)| o.exact) {
        if !quiet {
            eprintln!("voxflip: exact TFCE runs on the CPU");
        }
        return None;
    }
    if slot.is_none() {
        // On the GPU engine's own device, so that its maps need not leave the device.
        let opened = match engine.as_gpu() {
            Some(g) => GpuSpatial::on_device(g.shared_device()),
            None => GpuSpatial::open(&choice),
        };
        match opened {
            Ok(g) => {
                if !quiet {
                    eprintln!("voxflip: spatial statistics (TFCE, clusters) on the GPU: {}", g.adapter_info().name);
                }
                *slot = Some(g)
            }
            Err(e) => {
                eprintln!("voxflip: spatial statistics on the CPU: {e}");
                return None;
            }
        }
    }
    let gs = slot.as_mut()?;
    if let Err(e) = gs.configure(job) {
        eprintln!("voxflip: spatial statistics on the CPU: {e}");
        *slot = None;
        return None;
    }
    Some(gs.adapter_info().name.clone())
}

/// Permutation 0 is the identity, so its maximum is the observed map's maximum by
/// definition. Where the null comes from another arithmetic than the observed values (the
/// GPU's fixed-point cluster masses against the CPU's f64 sums), rounding could put it a
/// hair below, and the most extreme voxel would get p = 0 instead of at least 1/P: raise it.
fn with_identity_floor(mut null: Vec<f32>, observed: &[f32]) -> Vec<f32> {
    let obs_max = observed.iter().copied().filter(|x| !x.is_nan()).fold(f32::NEG_INFINITY, f32::max);
    if let Some(first) = null.first_mut() {
        if obs_max > *first {
            *first = obs_max;
        }
    }
    null
}

/// randomise's output file for `{prefix}_{what}`.
fn out_path(prefix: &str, what: &str, ext: &str) -> PathBuf {
    PathBuf::from(format!("{prefix}_{what}{ext}"))
}

/// Why a contrast's permutations are of `kind` (for stderr and the sidecar).
fn reason_for(kind: PermKind, opts: &AnalysisOptions) -> String {
    if kind == opts.perm_kind {
        opts.perm_reason.clone()
    } else {
        "sign flips: the contrast tests the mean (the constant is not in its nuisance), which reordering rows cannot test".into()
    }
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
) -> Result<(Vec<PermKind>, Vec<(PermKind, PermSet)>)> {
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
        if !opts.quiet {
            let nperm = perms.len();
            let what = match kind {
                PermKind::SignFlip => "sign flips",
                PermKind::Permute => "permutations",
                PermKind::Both => "permutations with sign flips",
            };
            let for_which = if kinds.iter().all(|&k| k == kind) {
                String::new()
            } else {
                let names: Vec<&str> =
                    design.contrasts.iter().zip(&kinds).filter(|(_, &k)| k == kind).map(|(c, _)| c.name.as_str()).collect();
                format!(" for {}", names.join(", "))
            };
            if perms.exhaustive {
                eprintln!("voxflip: exhaustive: all {nperm} distinct {what}{within}{for_which} (asked for {})", opts.n_perm);
            } else {
                eprintln!("voxflip: {nperm} random {what}{within}{for_which} (seed {}); {}", opts.seed, reason_for(kind, opts));
            }
        }
        sets.push((kind, perms));
    }
    Ok((kinds, sets))
}

/// Run all contrasts of `design` on `ds`; write outputs under `prefix`. Nothing is written
/// unless everything succeeds (outputs are renamed into place at the end).
pub fn run(ds: &Dataset, design: &Design, opts: &AnalysisOptions, prefix: &str) -> Result<RunReport> {
    let start = Instant::now();
    let mut outputs = OutputSet::new();
    OutputSet::check_dir(Path::new(prefix))?;
    let models: Vec<ContrastModel> =
        design.contrasts.iter().map(|c| ContrastModel::new(&design.m, c).map_err(Error::usage)).collect::<Result<_>>()?;
    let (kinds, sets) = permutation_sets(design, &models, opts, ds.n)?;
    let reason_of = |kind: PermKind| reason_for(kind, opts);
    let set_of = |ci: usize| -> &PermSet { &sets.iter().find(|(k, _)| *k == kinds[ci]).expect("generated above").1 };
    let total: usize = (0..kinds.len()).map(|ci| set_of(ci).len()).sum();
    let mut engine = make_engine(opts.backend, opts.adapter.as_deref(), opts.quiet)?;
    let mut graphs: Vec<(Connectivity, MaskGraph)> = Vec::new();
    let mut tables: Vec<ClusterTableJob> = Vec::new();
    let progress = crate::progress::bar(total as u64, opts.quiet);
    let mut summaries = Vec::new();
    // Spatial statistics run on the GPU engine's adapter when it is hardware (opened once).
    let mut gpu_spatial: Option<GpuSpatial> = None;
    let mut spatial_backend: Option<String> = None;
    for (ci, contrast) in design.contrasts.iter().enumerate() {
        let t0 = Instant::now();
        let model = &models[ci];
        let perms = set_of(ci);
        let nperm = perms.len();
        let problem = model.problem(&ds.y, ds.v);
        engine.prepare(&problem)?;
        let observed = observed_map(&mut engine, &problem)?;
        let name = &contrast.name;
        // Spatial statistics for this contrast, if asked for.
        let sp = &opts.spatial;
        let (extent_thr, mass_thr) = match contrast.kind {
            StatKind::T => (sp.t_extent, sp.t_mass),
            StatKind::F => (sp.f_extent, sp.f_mass),
        };
        let tfce_setup = sp.tfce.map(|o| {
            let g = graph_for(&mut graphs, ds, o.params.conn);
            let obs_max = observed.iter().copied().fold(0f32, f32::max);
            // randomise: dh = max(observed) / 100, fixed for every permutation.
            let dh = o.step.unwrap_or(obs_max / 100.0);
            (g, o, dh)
        });
        let cluster_graph = if extent_thr.is_some() || mass_thr.is_some() {
            Some(graph_for(&mut graphs, ds, sp.cluster_conn.unwrap_or(Connectivity::C26)))
        } else {
            None
        };
        let mut job = SpatialJob { tfce: None, tfce_observed: None, cluster_graph: None, extent_thr, mass_thr };
        if let Some((g, o, dh)) = tfce_setup {
            job.tfce = Some((&graphs[g].1, o, dh));
        }
        if let Some(g) = cluster_graph {
            job.cluster_graph = Some(&graphs[g].1);
        }
        let spatial_job_wanted = sp.tfce.is_some() || extent_thr.is_some() || mass_thr.is_some();
        let mut on_gpu =
            if spatial_job_wanted { gpu_spatial_for(&mut *engine, &job, &mut gpu_spatial, opts.quiet) } else { None };
        let mut tfce_obs = vec![0f32; ds.v];
        if let Some((g, o, dh)) = job.tfce {
            // The observed TFCE map comes from where the permutations' maps are reduced, so
            // that the identity permutation's TFCE equals it exactly and counts itself.
            let mut done = false;
            if let (Some(_), Some(gs)) = (&on_gpu, gpu_spatial.as_mut()) {
                match gs.tfce_batch(g, &observed, &o.params, dh, None) {
                    Ok(b) => {
                        tfce_obs = b.tfce;
                        done = true;
                    }
                    Err(e) => {
                        eprintln!("voxflip: spatial statistics on the CPU: {e}");
                        on_gpu = None;
                    }
                }
            }
            if !done {
                job.tfce_map(&observed, &mut crate::spatial::Workspace::new(), &mut tfce_obs);
            }
            job.tfce_observed = Some(&tfce_obs);
            if let (Some(_), Some(gs)) = (&on_gpu, gpu_spatial.as_mut()) {
                if let Err(e) = gs.configure(&job) {
                    eprintln!("voxflip: spatial statistics on the CPU: {e}");
                    on_gpu = None;
                }
            }
        }
        let spatial_job = if spatial_job_wanted { Some(&job) } else { None };
        if let Some(name) = &on_gpu {
            spatial_backend = Some(format!("gpu: {name}"));
        } else if spatial_job.is_some() {
            spatial_backend.get_or_insert_with(|| format!("cpu ({} threads)", rayon::current_num_threads()));
        }
        let gs = if on_gpu.is_some() { gpu_spatial.as_mut() } else { None };
        let (null, counts, snull) =
            permute_contrast_with(&mut engine, &problem, perms, &observed, spatial_job, gs, &progress)?;
        let seconds = t0.elapsed().as_secs_f64();
        let null = MaxStatNull::new(with_identity_floor(null, &observed));
        let mut spatial_summary = Vec::new();
        if job.tfce.is_some() {
            let tnull = MaxStatNull::new(with_identity_floor(snull.tfce_max.clone(), &tfce_obs));
            outputs.write_map(&out_path(prefix, &format!("tfce_{name}"), ".nii.gz"), &ds.reference, ds.dims, &ds.expand(&tfce_obs))?;
            let pc: Vec<f64> = corrected_p(&tfce_obs, &tnull);
            let m: Vec<f32> = pc.iter().map(|&p| opts.scale.apply(p)).collect();
            outputs.write_map(&out_path(prefix, &format!("tfce_corrp_{name}"), ".nii.gz"), &ds.reference, ds.dims, &ds.expand(&m))?;
            if opts.uncorrp {
                let m: Vec<f32> = uncorrected_p(&snull.tfce_counts, nperm).iter().map(|&p| opts.scale.apply(p)).collect();
                outputs.write_map(&out_path(prefix, &format!("tfce_p_{name}"), ".nii.gz"), &ds.reference, ds.dims, &ds.expand(&m))?;
            }
            if opts.save_null {
                outputs.write_text(&out_path(prefix, &format!("null_tfce_{name}"), ".txt"), &null_text(&tnull.values))?;
            }
            tables.push(("tfce", name.clone(), observed.clone(), pc.clone(), f32::NEG_INFINITY));
            spatial_summary.push(spatial_entry("tfce", &tnull, &pc));
        }
        for (what, thr, is_mass, values) in [("clustere", extent_thr, false, &snull.extent_max), ("clusterm", mass_thr, true, &snull.mass_max)] {
            let (Some(thr), Some(g)) = (thr, job.cluster_graph) else { continue };
            let obs_vals = observed_cluster_values(g, &observed, thr, is_mass);
            let cnull = MaxStatNull::new(with_identity_floor(values.clone(), &obs_vals));
            let pc: Vec<f64> = obs_vals.iter().map(|&x| if x.is_nan() { 1.0 } else { cnull.corrected_p(x) }).collect();
            // randomise writes 0 outside clusters (1 - p) ; -log10 p is 0 there too.
            let m: Vec<f32> = pc.iter().zip(&obs_vals).map(|(&p, &x)| if x.is_nan() { 0.0 } else { opts.scale.apply(p) }).collect();
            outputs.write_map(&out_path(prefix, &format!("{what}_corrp_{name}"), ".nii.gz"), &ds.reference, ds.dims, &ds.expand(&m))?;
            if opts.save_null {
                outputs.write_text(&out_path(prefix, &format!("null_{what}_{name}"), ".txt"), &null_text(&cnull.values))?;
            }
            tables.push((what, name.clone(), observed.clone(), pc.clone(), thr));
            spatial_summary.push(spatial_entry(what, &cnull, &pc));
        }
        outputs.write_map(&out_path(prefix, name, ".nii.gz"), &ds.reference, ds.dims, &ds.expand(&observed))?;
        let pcorr = corrected_p(&observed, &null);
        if opts.vox_corrp {
            let m: Vec<f32> = pcorr.iter().map(|&p| opts.scale.apply(p)).collect();
            outputs.write_map(&out_path(prefix, &format!("vox_corrp_{name}"), ".nii.gz"), &ds.reference, ds.dims, &ds.expand(&m))?;
        }
        if opts.uncorrp {
            let m: Vec<f32> = uncorrected_p(&counts, nperm).iter().map(|&p| opts.scale.apply(p)).collect();
            outputs.write_map(&out_path(prefix, &format!("vox_p_{name}"), ".nii.gz"), &ds.reference, ds.dims, &ds.expand(&m))?;
        }
        if opts.save_null {
            outputs.write_text(&out_path(prefix, &format!("null_{name}"), ".txt"), &null_text(&null.values))?;
        }
        if opts.vox_corrp {
            tables.push(("vox", name.clone(), observed.clone(), pcorr.clone(), f32::NEG_INFINITY));
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
    }
    write_cluster_tables(&mut outputs, ds, prefix, &tables, &graphs)?;
    progress.finish_and_clear();
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
        backend: engine.describe(),
        spatial_backend,
        p_values: match opts.scale {
            PScale::OneMinusP => "1 - p (randomise convention)",
            PScale::NegLog10 => "-log10(p)",
        },
        contrasts: summaries,
        seconds_total: start.elapsed().as_secs_f64(),
        outputs: Vec::new(),
    };
    let json_path = out_path(prefix, "voxflip", ".json");
    report.outputs = outputs.planned().into_iter().chain(std::iter::once(json_path.clone())).collect();
    let json = serde_json::to_string_pretty(&report).expect("report serializes");
    outputs.write_text(&json_path, &json)?;
    outputs.commit()?;
    Ok(report)
}

/// One contrast's permutation results.
#[derive(Clone, Debug)]
pub struct ContrastResult {
    /// The observed statistic map (permutation 0), in-mask voxels.
    pub observed: Vec<f32>,
    /// Maximum statistic of every permutation, in permutation order (index 0 = observed).
    pub null: Vec<f32>,
    /// Per voxel, #{j : T_jv >= observed_v} over all permutations (identity included).
    pub counts: Vec<u32>,
}

/// Run every permutation of `perms` for one problem on a fresh CPU engine (the library
/// entry point tests and benches use; `run` adds engines, spatial statistics, outputs).
pub fn permutation_test(problem: &ContrastProblem, perms: &PermSet) -> Result<ContrastResult> {
    let mut engine: Box<dyn Engine> = Box::new(CpuEngine::new());
    engine.prepare(problem)?;
    let observed = observed_map(&mut engine, problem)?;
    let (null, counts, _) = permute_contrast(&mut engine, problem, perms, &observed, None, &indicatif::ProgressBar::hidden())?;
    Ok(ContrastResult { observed, null, counts })
}

/// The observed statistic map (the identity permutation, always index 0).
pub fn observed_map(engine: &mut Box<dyn Engine>, problem: &ContrastProblem) -> Result<Vec<f32>> {
    let identity = PermSet::generate(problem.n, PermKind::SignFlip, &vec![0; problem.n], 1, 0).map_err(Error::usage)?;
    let mut observed = vec![0f32; problem.v];
    run_with_fallback(engine, problem, |e| e.run_batch(&identity, 0..1, None, Some(&mut observed)).map(|_| ()))?;
    Ok(observed)
}

/// Largest batch whose maps are held for spatial statistics (batch x V x 4 bytes).
pub const SPATIAL_BATCH: usize = 64;

/// The max-statistic null, the exceedance counts and (with `spatial`) the spatial nulls of
/// one contrast, over all permutations of `perms`.
pub fn permute_contrast(
    engine: &mut Box<dyn Engine>,
    problem: &ContrastProblem,
    perms: &PermSet,
    observed: &[f32],
    spatial: Option<&SpatialJob>,
    progress: &indicatif::ProgressBar,
) -> Result<(Vec<f32>, Vec<u32>, SpatialNull)> {
    permute_contrast_with(engine, problem, perms, observed, spatial, None, progress)
}

/// [`permute_contrast`], with the spatial statistics of each batch computed by `gpu_spatial`
/// (configured for `spatial`) when given. If the GPU fails there, voxflip says so and
/// reduces that batch and the rest on the CPU; nothing of a failed batch is kept.
pub fn permute_contrast_with(
    engine: &mut Box<dyn Engine>,
    problem: &ContrastProblem,
    perms: &PermSet,
    observed: &[f32],
    spatial: Option<&SpatialJob>,
    mut gpu_spatial: Option<&mut GpuSpatial>,
    progress: &indicatif::ProgressBar,
) -> Result<(Vec<f32>, Vec<u32>, SpatialNull)> {
    let v = problem.v;
    let nperm = perms.len();
    let mut null = Vec::with_capacity(nperm);
    let mut counts = vec![0u32; v];
    let mut snull = SpatialNull::default();
    let Some(job) = spatial else {
        let mut done = 0;
        while done < nperm {
            let b = engine.preferred_batch().min(nperm - done);
            let res = run_with_fallback(engine, problem, |e| e.run_batch(perms, done..done + b, Some(observed), None))?;
            null.extend_from_slice(&res.max_stat);
            for (c, x) in counts.iter_mut().zip(&res.exceed) {
                *c += x;
            }
            done += b;
            progress.inc(b as u64);
        }
        return Ok((null, counts, snull));
    };
    // With spatial statistics, batch k's maps are reduced (TFCE, clusters; on the GPU
    // reducer or the CPU) on a second thread while the engine computes batch k + 1: the two
    // halves of the work overlap instead of taking turns. Reductions are appended strictly
    // in batch order, so the result does not depend on the overlap. When the engine and the
    // reducer share a GPU, the maps stay in device memory (the engine leaves each batch's
    // maps in a buffer that the reducer reads); otherwise two host map buffers alternate,
    // each at most SPATIAL_BATCH x V floats.
    std::thread::scope(|scope| -> Result<()> {
        let mut spare: Vec<f32> = Vec::new();
        let mut in_flight: Option<std::thread::ScopedJoinHandle<'_, Reduced<'_>>> = None;
        let mut gpu = gpu_spatial.take();
        // Maps stay on the device while the GPU reducer works (mass needs a threshold > 0).
        let mut device_spatial = gpu.is_some() && job.mass_thr.is_none_or(|t| t > 0.0);
        let mut done = 0;
        while done < nperm {
            let b = engine.preferred_batch().min(nperm - done).min(SPATIAL_BATCH);
            let range = done..done + b;
            // (The reducer itself may be out on the thread reducing the previous batch.)
            let on_device = device_spatial && engine.as_gpu().is_some_and(|g| g.can_keep_maps(b));
            let mut launched = false;
            if on_device {
                let ran = engine.as_gpu().expect("checked").run_batch_on_device(perms, range.clone(), Some(observed));
                collect(&mut in_flight, engine, &mut gpu, &mut spare, &mut snull, (problem, perms, job))?;
                // A reducer that failed on the previous batch is gone: this batch is redone
                // on the host (its thread gets no reducer) and the rest stay there.
                device_spatial &= gpu.is_some();
                match ran {
                    Ok((res, buf)) => {
                        null.extend_from_slice(&res.max_stat);
                        for (c, x) in counts.iter_mut().zip(&res.exceed) {
                            *c += x;
                        }
                        let g = gpu.take();
                        let r = range.clone();
                        in_flight = Some(scope.spawn(move || reduce_device_maps(g, buf, res.max_stat, v, r)));
                        launched = true;
                    }
                    Err(Error::Gpu(msg)) => {
                        // The device is gone for the reducer too: both continue on the CPU.
                        eprintln!("voxflip: GPU failed ({msg}); continuing on the CPU engine from this batch");
                        let mut cpu: Box<dyn Engine> = Box::new(CpuEngine::new());
                        cpu.prepare(problem)?;
                        *engine = cpu;
                        gpu = None;
                        device_spatial = false;
                    }
                    Err(e) => return Err(e),
                }
            }
            if !launched {
                let mut maps = std::mem::take(&mut spare);
                maps.resize(b * v, 0f32);
                let res = run_with_fallback(engine, problem, |e| e.run_batch(perms, range.clone(), Some(observed), Some(&mut maps[..])));
                // Collect the previous batch's reduction before anything else can fail.
                collect(&mut in_flight, engine, &mut gpu, &mut spare, &mut snull, (problem, perms, job))?;
                let res = res?;
                null.extend_from_slice(&res.max_stat);
                for (c, x) in counts.iter_mut().zip(&res.exceed) {
                    *c += x;
                }
                let g = gpu.take();
                in_flight = Some(scope.spawn(move || reduce_maps(job, g, maps, v)));
            }
            done += b;
            progress.inc(b as u64);
        }
        collect(&mut in_flight, engine, &mut gpu, &mut spare, &mut snull, (problem, perms, job))
    })?;
    Ok((null, counts, snull))
}

/// Collect the reduction in flight (in batch order) into `snull`. A batch whose maps stayed
/// on a device that then failed is recomputed on the host and reduced on the CPU.
fn collect<'s, 'g>(
    in_flight: &mut Option<std::thread::ScopedJoinHandle<'s, Reduced<'g>>>,
    engine: &mut Box<dyn Engine>,
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
            job.reduce(&maps, v, snull);
        }
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
    match gs.reduce_device(&buf, &maxima, v, &mut part) {
        Ok(()) => (Outcome::Reduced(part, None), Some(gs)),
        Err(e) => {
            eprintln!("voxflip: GPU spatial statistics failed ({e}); continuing on the CPU from this batch");
            (Outcome::Redo(range), None)
        }
    }
}

/// The spatial statistics of one batch of maps: on the GPU reducer when there is one, else
/// (or if it fails: said on stderr, and the GPU is not used again) on the CPU. Returns the
/// map buffer for reuse, the reducer if it is still usable, and the batch's nulls.
fn reduce_maps<'g>(job: &SpatialJob, gpu: Option<&'g mut GpuSpatial>, maps: Vec<f32>, v: usize) -> Reduced<'g> {
    let mut part = SpatialNull::default();
    if let Some(gs) = gpu {
        match gs.reduce(&maps, v, &mut part) {
            Ok(()) => return (Outcome::Reduced(part, Some(maps)), Some(gs)),
            Err(e) => {
                eprintln!("voxflip: GPU spatial statistics failed ({e}); continuing on the CPU from this batch");
                part = SpatialNull::default();
            }
        }
    }
    job.reduce(&maps, v, &mut part);
    (Outcome::Reduced(part, Some(maps)), None)
}

/// Run `f` on the engine; if the GPU fails (device lost, out of memory), say so, switch to
/// the CPU engine and run the same batch there, so the run continues from where it was.
fn run_with_fallback<T>(
    engine: &mut Box<dyn Engine>,
    problem: &ContrastProblem,
    mut f: impl FnMut(&mut dyn Engine) -> Result<T>,
) -> Result<T> {
    match f(engine.as_mut()) {
        Err(Error::Gpu(msg)) => {
            eprintln!("voxflip: GPU failed ({msg}); continuing on the CPU engine from this batch");
            let mut cpu: Box<dyn Engine> = Box::new(CpuEngine::new());
            cpu.prepare(problem)?;
            *engine = cpu;
            f(engine.as_mut())
        }
        other => other,
    }
}

#[cfg(test)]
mod identity_floor_tests {
    use super::with_identity_floor;

    #[test]
    fn identity_maximum_is_at_least_the_observed_maximum() {
        // The GPU rounded the identity's maximum a hair below the observed 7.0.
        let null = with_identity_floor(vec![6.999_999, 3.0, 8.0], &[1.0, f32::NAN, 7.0]);
        assert_eq!(null, vec![7.0, 3.0, 8.0]);
        // Already consistent (or above): unchanged; other permutations are never touched.
        assert_eq!(with_identity_floor(vec![7.5, 9.0], &[7.0]), vec![7.5, 9.0]);
        assert_eq!(with_identity_floor(vec![], &[7.0]), Vec::<f32>::new());
    }
}
