//! What a run reports: the provenance sidecar (`{out}_voxflip.json`) and the summary on
//! stderr.
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use voxflip_engines::EngineOptions;
use voxflip_stats::{MaxStatNull, PermKind, StatKind};

/// The exchangeability blocks of a run, as the sidecar records them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExchangeBlocks {
    /// Number of blocks.
    pub count: usize,
    /// Whole blocks exchanged (--permuteBlocks) rather than rows within blocks.
    pub whole: bool,
}

/// What a run found, for the user's summary on stderr.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
    /// The null of the maximum statistic, binned (for the report's histogram).
    pub null_histogram: Histogram,
    /// The contrast's weights, one row per row of the contrast matrix.
    pub weights: Vec<Vec<f64>>,
    pub seconds: f64,
    pub gflops: f64,
    /// TFCE / cluster nulls: statistic, quantiles, FWE 0.05 threshold, voxels significant.
    pub spatial: Vec<SpatialSummary>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SpatialSummary {
    pub statistic: String,
    /// The cluster-forming threshold (cluster extent and mass).
    pub cluster_threshold: Option<f32>,
    /// The largest observed value (a voxel's TFCE, a cluster's extent or mass).
    pub observed_max: f32,
    pub null_histogram: Histogram,
    pub null_quantiles: Vec<(f64, f32)>,
    pub fwe05_threshold: f32,
    pub voxels_fwe05: usize,
}

/// Where a run's wall time went, in seconds: the sidecar's `timings`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Timings {
    /// Reading the inputs and forming the data matrix, before the analysis (0: unknown).
    pub read_inputs: f64,
    /// The analysis up to its first permutation: models, permutation sets, engines.
    pub setup: f64,
    /// Every contrast: observed maps, permutations with their spatial statistics (TFCE,
    /// clusters; overlapped with the engine's batches), p-values.
    pub contrasts: f64,
    /// After the contrasts: cluster tables, the mean image, and waiting for the maps that
    /// were being written in the background (most of them while later contrasts ran).
    pub outputs: f64,
}

/// The quantiles of a null the sidecar records: median, 90%, 95%, 99% and the maximum.
pub fn null_quantiles(null: &MaxStatNull) -> Vec<(f64, f32)> {
    [0.5, 0.9, 0.95, 0.99, 1.0].iter().map(|&q| (q, null.quantile(q))).collect()
}

impl SpatialSummary {
    /// The summary of a spatial statistic's null, its observed values (NaN: none) and its
    /// corrected p per voxel.
    pub fn of(
        statistic: &str,
        cluster_threshold: Option<f32>,
        null: &MaxStatNull,
        observed: &[f32],
        pc: &[f64],
    ) -> SpatialSummary {
        let observed_max = observed.iter().copied().filter(|x| !x.is_nan()).fold(0f32, f32::max);
        SpatialSummary {
            statistic: statistic.to_string(),
            cluster_threshold,
            observed_max,
            null_histogram: Histogram::of(&null.values, observed_max, null.threshold(0.05)),
            null_quantiles: null_quantiles(null),
            fwe05_threshold: null.threshold(0.05),
            voxels_fwe05: pc.iter().filter(|&&p| p <= 0.05).count(),
        }
    }
}

/// A null distribution binned for the report's histogram.
pub type Histogram = voxflip_report::Bins;

/// The image grid of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Grid {
    pub dims: [usize; 3],
    pub voxel_mm: [f32; 3],
}

/// The design as the sidecar records it (and the report draws it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DesignRecord {
    pub columns: Vec<String>,
    /// One row per image.
    pub matrix: Vec<Vec<f64>>,
    /// The exchangeability block of each image (-e), if any.
    pub blocks: Option<Vec<u32>>,
    /// The rank of the design (absent in sidecars of earlier versions).
    #[serde(default)]
    pub rank: Option<usize>,
    /// A rank-deficient design's redundant columns, each a linear combination of the
    /// columns before it (empty when the design has full rank); its contrasts were fitted
    /// through the pseudo-inverse.
    #[serde(default)]
    pub redundant_columns: Vec<RedundantColumn>,
}

/// A design column that is a linear combination of the columns before it, by column name.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RedundantColumn {
    pub column: String,
    /// The columns its combination uses (empty: an all-zero column).
    pub combination_of: Vec<String>,
}

/// In-mask voxels left out of the analysis, and why.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DroppedVoxels {
    pub count: usize,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunReport {
    pub version: String,
    /// When the run ended (UTC, ISO 8601).
    pub date: String,
    pub command_line: Vec<String>,
    pub input: String,
    pub mask: Option<String>,
    pub grid: Grid,
    pub voxels_dropped: Vec<DroppedVoxels>,
    pub design: DesignRecord,
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
    /// randomise -v: the std (mm) with which t contrasts' variance was smoothed (their maps
    /// and p-values are of the pseudo-t); absent without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variance_smoothing_mm: Option<f64>,
    pub backend: String,
    /// How the engines were chosen and configured.
    pub engine_options: EngineOptions,
    /// Where TFCE / cluster statistics ran (None without them).
    pub spatial_backend: Option<String>,
    pub p_values: String,
    /// p maps hold -log10(p) (true) or 1 - p.
    pub logp: bool,
    /// What the report shows (background, atlases).
    pub report: crate::options::ReportOptions,
    pub contrasts: Vec<ContrastSummary>,
    /// From the analysis' start (the inputs read) to the sidecar (the report is written
    /// after it).
    pub seconds_total: f64,
    /// Where the wall time went (absent in sidecars of earlier versions).
    #[serde(default)]
    pub timings: Timings,
    /// The shards merged into these outputs (`voxflip merge`); absent for a single run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<Vec<crate::state::ShardRecord>>,
    /// The voxelwise regressors (--vxl/--vxf): design column (from 1) and image; absent
    /// without them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub voxelwise_evs: Vec<VoxelwiseRecord>,
    pub outputs: Vec<PathBuf>,
}

/// One voxelwise regressor of the sidecar.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VoxelwiseRecord {
    pub column: usize,
    pub file: String,
}

/// How a run ended, on stderr (nothing with --quiet).
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

/// What the run found, on stderr (nothing with --quiet).
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

/// Now, UTC, as ISO 8601 (`2026-12-03T07:59:12Z`).
pub fn utc_now() -> String {
    iso_utc(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// Seconds since 1970 as an ISO 8601 UTC time.
fn iso_utc(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_now_is_iso() {
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00Z");
        // `date -u -d @951782400`: a leap day of a century year.
        assert_eq!(iso_utc(951_782_400 + 3723), "2000-02-29T01:02:03Z");
        let d = utc_now();
        assert_eq!(d.len(), 20, "{d}");
        assert!(d.starts_with("20") && d.ends_with('Z') && &d[10..11] == "T", "{d}");
    }
}
