//! The whole analysis of one dataset: for each contrast, the partitioned model, the
//! observed map, every permutation in batches through an engine, p-values, and outputs.
use crate::data::Dataset;
use crate::design::Design;
use crate::engine::cpu::CpuEngine;
use crate::engine::{ContrastProblem, Engine, StatKind};
use crate::error::{Error, Result};
use crate::glm::{identical_row_labels, ContrastModel};
use crate::inference::{corrected_p, uncorrected_p, MaxStatNull, PScale};
use crate::io::OutputSet;
use crate::perm::{PermKind, PermSet};
use serde::Serialize;
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
}

/// What a run found, for the user's summary on stderr.
#[derive(Clone, Debug, Serialize)]
pub struct ContrastSummary {
    pub name: String,
    pub label: String,
    pub kind: StatKind,
    pub dof: f64,
    pub max_stat: f32,
    pub fwe05_threshold: f32,
    pub voxels_fwe05: usize,
    pub null_quantiles: Vec<(f64, f32)>,
    pub seconds: f64,
    pub gflops: f64,
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
    pub backend: String,
    pub p_values: &'static str,
    pub contrasts: Vec<ContrastSummary>,
    pub seconds_total: f64,
    pub outputs: Vec<PathBuf>,
}

/// Choose the engine for `backend`.
pub fn make_engine(backend: Backend, adapter: Option<&str>, quiet: bool) -> Result<Box<dyn Engine>> {
    let _ = (adapter, quiet);
    match backend {
        Backend::Cpu | Backend::Auto => Ok(Box::new(CpuEngine::new())),
        Backend::Gpu => Err(Error::Gpu("the GPU engine is not built into this version".into())),
    }
}

/// randomise's output file for `{prefix}_{what}`.
fn out_path(prefix: &str, what: &str, ext: &str) -> PathBuf {
    PathBuf::from(format!("{prefix}_{what}{ext}"))
}

/// Run all contrasts of `design` on `ds`; write outputs under `prefix`. Nothing is written
/// unless everything succeeds (outputs are renamed into place at the end).
pub fn run(ds: &Dataset, design: &Design, opts: &AnalysisOptions, prefix: &str) -> Result<RunReport> {
    let start = Instant::now();
    let mut outputs = OutputSet::new();
    outputs.check_dir(Path::new(prefix))?;
    let labels = if opts.perm_kind.permutes() { identical_row_labels(&design.m) } else { vec![0; ds.n] };
    let perms = PermSet::generate(ds.n, opts.perm_kind, &labels, opts.n_perm, opts.seed).map_err(Error::usage)?;
    let nperm = perms.len();
    let what = match opts.perm_kind {
        PermKind::SignFlip => "sign flips",
        PermKind::Permute => "permutations",
        PermKind::Both => "permutations with sign flips",
    };
    if !opts.quiet {
        if perms.exhaustive {
            eprintln!("voxflip: exhaustive: all {nperm} distinct {what} (asked for {})", opts.n_perm);
        } else {
            eprintln!("voxflip: {nperm} random {what} (seed {}); {}", opts.seed, opts.perm_reason);
        }
    }
    let mut engine = make_engine(opts.backend, opts.adapter.as_deref(), opts.quiet)?;
    let progress = crate::progress::bar((nperm * design.contrasts.len()) as u64, opts.quiet);
    let mut summaries = Vec::new();
    for (ci, contrast) in design.contrasts.iter().enumerate() {
        let t0 = Instant::now();
        let model = ContrastModel::new(&design.m, contrast).map_err(Error::usage)?;
        let problem = model.problem(&ds.y, ds.v);
        engine.prepare(&problem)?;
        let (observed, null, counts) = permute_contrast(&mut engine, &problem, &perms, &progress)?;
        let seconds = t0.elapsed().as_secs_f64();
        let null = MaxStatNull::new(null);
        let name = &contrast.name;
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
            let text: String = null.values.iter().map(|x| format!("{x}\n")).collect();
            outputs.write_text(&out_path(prefix, &format!("null_{name}"), ".txt"), &text)?;
        }
        let th = null.threshold(0.05);
        summaries.push(ContrastSummary {
            name: name.clone(),
            label: design.contrast_labels.get(ci).cloned().unwrap_or_default(),
            kind: contrast.kind,
            dof: model.dof,
            max_stat: observed.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            fwe05_threshold: th,
            voxels_fwe05: pcorr.iter().filter(|&&p| p <= 0.05).count(),
            null_quantiles: [0.5, 0.9, 0.95, 0.99, 1.0].iter().map(|&q| (q, null.quantile(q))).collect(),
            seconds,
            gflops: problem.flops_per_perm() * nperm as f64 / seconds / 1e9,
        });
    }
    progress.finish_and_clear();
    let mut report = RunReport {
        version: env!("CARGO_PKG_VERSION"),
        command_line: opts.command_line.clone(),
        input: ds.source.display().to_string(),
        n_images: ds.n,
        n_voxels: ds.v,
        seed: opts.seed,
        permutations: nperm,
        permutations_requested: opts.n_perm,
        exhaustive: perms.exhaustive,
        permutation_kind: opts.perm_kind,
        permutation_reason: opts.perm_reason.clone(),
        backend: engine.describe(),
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

/// Run every permutation of `perms` for one prepared problem on a fresh CPU engine (the
/// library entry point tests and benches use; `run` adds engines, outputs and provenance).
pub fn permutation_test(problem: &ContrastProblem, perms: &PermSet) -> Result<ContrastResult> {
    let mut engine: Box<dyn Engine> = Box::new(CpuEngine::new());
    engine.prepare(problem)?;
    let (observed, null, counts) = permute_contrast(&mut engine, problem, perms, &indicatif::ProgressBar::hidden())?;
    Ok(ContrastResult { observed, null, counts })
}

/// The observed map, the max-statistic null and the exceedance counts of one contrast.
pub fn permute_contrast(
    engine: &mut Box<dyn Engine>,
    problem: &ContrastProblem,
    perms: &PermSet,
    progress: &indicatif::ProgressBar,
) -> Result<(Vec<f32>, Vec<f32>, Vec<u32>)> {
    let v = problem.v;
    let mut observed = vec![0f32; v];
    run_with_fallback(engine, problem, |e| e.run_batch(perms, 0..1, None, Some(&mut observed)).map(|_| ()))?;
    let nperm = perms.len();
    let mut null = Vec::with_capacity(nperm);
    let mut counts = vec![0u32; v];
    let mut done = 0;
    while done < nperm {
        let b = engine.preferred_batch().min(nperm - done);
        let res = run_with_fallback(engine, problem, |e| e.run_batch(perms, done..done + b, Some(&observed), None))?;
        null.extend_from_slice(&res.max_stat);
        for (c, x) in counts.iter_mut().zip(&res.exceed) {
            *c += x;
        }
        done += b;
        progress.inc(b as u64);
    }
    Ok((observed, null, counts))
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
