//! What a run reports: the provenance sidecar (`{out}_voxflip.json`) and the summary on
//! stderr.
use serde::Serialize;
use std::path::PathBuf;
use voxflip_engines::EngineOptions;
use voxflip_stats::{MaxStatNull, PermKind, StatKind};

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

/// The quantiles of a null the sidecar records: median, 90%, 95%, 99% and the maximum.
pub fn null_quantiles(null: &MaxStatNull) -> Vec<(f64, f32)> {
    [0.5, 0.9, 0.95, 0.99, 1.0].iter().map(|&q| (q, null.quantile(q))).collect()
}

impl SpatialSummary {
    /// The summary of a spatial statistic's null and its corrected p per voxel.
    pub fn of(statistic: &'static str, null: &MaxStatNull, pc: &[f64]) -> SpatialSummary {
        SpatialSummary {
            statistic,
            null_quantiles: null_quantiles(null),
            fwe05_threshold: null.threshold(0.05),
            voxels_fwe05: pc.iter().filter(|&&p| p <= 0.05).count(),
        }
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
    /// How the engines were chosen and configured.
    pub engine_options: EngineOptions,
    /// Where TFCE / cluster statistics ran (None without them).
    pub spatial_backend: Option<String>,
    pub p_values: &'static str,
    pub contrasts: Vec<ContrastSummary>,
    pub seconds_total: f64,
    /// The shards merged into these outputs (`voxflip merge`); absent for a single run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<Vec<crate::state::ShardRecord>>,
    pub outputs: Vec<PathBuf>,
}

/// How a run ended, on stderr (nothing with -q).
pub fn print_outcome(o: &crate::pipeline::Outcome, quiet: bool) {
    match o {
        crate::pipeline::Outcome::Report(r) => print_summary(r, quiet),
        crate::pipeline::Outcome::Shard { file, shard, permutations, seconds, backend } => {
            if quiet {
                return;
            }
            let ranges: Vec<String> = permutations.iter().map(|r| format!("{}..{}", r.start, r.end)).collect();
            eprintln!(
                "voxflip: shard {} of {}: permutations {} in {seconds:.1} s on {backend}; state in {}",
                shard.index,
                shard.count,
                ranges.join(", "),
                file.display()
            );
        }
    }
}

/// What the run found, on stderr (nothing with -q).
pub fn print_summary(r: &RunReport, quiet: bool) {
    if quiet {
        return;
    }
    // Contrasts may differ in what was exchanged (a mean is sign-flipped): list each kind once.
    let mut parts: Vec<String> = Vec::new();
    for c in &r.contrasts {
        let what = match c.permutation_kind {
            PermKind::SignFlip => "sign flips",
            PermKind::Permute => "permutations",
            PermKind::Both => "permutations+flips",
        };
        let part = format!("{} {what} ({})", c.permutations, if c.exhaustive { "exhaustive" } else { "random" });
        if !parts.contains(&part) {
            parts.push(part);
        }
    }
    eprintln!(
        "voxflip: {} images, {} voxels, {}, {:.1} s on {}",
        r.n_images,
        r.n_voxels,
        parts.join(" and "),
        r.seconds_total,
        r.backend
    );
    for c in &r.contrasts {
        eprintln!(
            "  {:8} {:45} max {:7.3}  FWE 0.05 threshold {:7.3}  {:7} voxels significant",
            c.name, c.label, c.max_stat, c.fwe05_threshold, c.voxels_fwe05
        );
        for s in &c.spatial {
            eprintln!(
                "  {:8} {:>45} {:>36}  {:7} voxels significant",
                "",
                format!("{} (FWE from its own null)", s.statistic),
                "",
                s.voxels_fwe05
            );
        }
    }
    eprintln!(
        "  outputs: {} files, e.g. {}",
        r.outputs.len(),
        r.outputs.first().map(|p| p.display().to_string()).unwrap_or_default()
    );
}
