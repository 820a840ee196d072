//! The sidecar (`{prefix}_voxflip.json`) as the report reads it back: the fields it shows.
use crate::error::{Error, Result};
use crate::options::ReportOptions;
use crate::summary::{DesignRecord, DroppedVoxels, Grid, Histogram};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Deserialize)]
pub struct Sidecar {
    pub version: String,
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
    pub permutations_requested: usize,
    pub exchangeability_blocks: Option<Blocks>,
    pub backend: String,
    pub spatial_backend: Option<String>,
    pub logp: bool,
    pub report: ReportOptions,
    pub contrasts: Vec<ContrastRecord>,
    pub seconds_total: f64,
    #[serde(default)]
    pub shards: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
pub struct Blocks {
    pub count: usize,
    pub whole: bool,
}

#[derive(Debug, Deserialize)]
pub struct ContrastRecord {
    pub name: String,
    pub label: String,
    pub kind: String,
    pub dof: f64,
    pub permutation_kind: String,
    pub permutation_reason: String,
    pub permutations: usize,
    pub exhaustive: bool,
    pub max_stat: f32,
    pub fwe05_threshold: f32,
    pub voxels_fwe05: usize,
    pub null_histogram: Histogram,
    pub weights: Vec<Vec<f64>>,
    pub seconds: f64,
    pub spatial: Vec<SpatialRecord>,
}

#[derive(Debug, Deserialize)]
pub struct SpatialRecord {
    pub statistic: String,
    pub cluster_threshold: Option<f32>,
    pub observed_max: f32,
    pub null_histogram: Histogram,
    pub fwe05_threshold: f32,
    pub voxels_fwe05: usize,
}

impl Sidecar {
    /// `{prefix}_voxflip.json`.
    pub fn read(prefix: &str) -> Result<Sidecar> {
        let path = PathBuf::from(format!("{prefix}_voxflip.json"));
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Error::input(&path, format!("no such file: is {prefix} the -o prefix of a finished run?"))
            }
            _ => Error::input(&path, format!("cannot read the run's sidecar ({e})")),
        })?;
        let s: Sidecar = serde_json::from_str(&text)
            .map_err(|e| Error::input(&path, format!("not the sidecar of a run of this voxflip version ({e})")))?;
        if s.contrasts.is_empty() {
            return Err(Error::input(&path, "records no contrast"));
        }
        Ok(s)
    }
}
