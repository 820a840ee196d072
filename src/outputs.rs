//! A run's outputs under randomise's names: maps, p-maps, nulls, cluster tables and the
//! sidecar, written into one atomic [`OutputSet`] (nothing appears unless the whole run
//! succeeded).
use crate::error::{Error, Result};
use std::path::PathBuf;
use voxflip_io::{Dataset, OutputSet, OutputType};
use voxflip_stats::spatial::{cluster_table, local_maxima_table, Connectivity, MaskGraph, TfceEdge};
use voxflip_stats::PScale;

/// The outputs of one run with prefix `prefix` on the grid of `ds`.
pub struct Outputs<'a> {
    set: OutputSet,
    prefix: &'a str,
    ds: &'a Dataset,
    scale: PScale,
    /// The images' extension (FSLOUTPUTTYPE).
    ext: &'static str,
}

/// The type of the images a run writes: `FSLOUTPUTTYPE`'s (default `.nii.gz`); a type
/// voxflip cannot write is refused in one line.
pub fn output_type() -> Result<OutputType> {
    let value = std::env::var_os("FSLOUTPUTTYPE").map(|v| v.to_string_lossy().into_owned());
    OutputType::from_fsl(value.as_deref()).map_err(Error::usage)
}

/// Tests only: milliseconds to wait before each rename of a commit, so that the kill tests
/// can land signals inside the renames (VOXFLIP_TEST_COMMIT_PAUSE_MS).
fn commit_pause() -> Option<std::time::Duration> {
    let ms: u64 = std::env::var("VOXFLIP_TEST_COMMIT_PAUSE_MS").ok()?.parse().ok()?;
    Some(std::time::Duration::from_millis(ms.min(10_000)))
}

/// Before a run writes under `prefix`: finish the commits killed runs left half done and
/// remove dead runs' temporaries with this prefix (see [`voxflip_io::temps`]), saying so.
pub fn clean_up_after_dead_runs(prefix: &str) {
    let done = voxflip_io::temps::clean_up_after_dead_runs(std::path::Path::new(prefix));
    for marker in &done.rolled_forward {
        log::warn!("{}: finished the commit of a run killed while renaming its outputs", marker.display());
    }
    if done.removed > 0 {
        log::info!("removed {} temporary file(s) that interrupted runs with prefix {prefix} left", done.removed);
    }
}

impl<'a> Outputs<'a> {
    /// Checks, before any work, that the prefix's directory exists and is writable, and
    /// cleans up after dead runs with the same prefix.
    pub fn new(prefix: &'a str, ds: &'a Dataset, scale: PScale) -> Result<Self> {
        OutputSet::check_dir(std::path::Path::new(prefix))?;
        let ext = output_type()?.extension();
        clean_up_after_dead_runs(prefix);
        let mut set = OutputSet::new();
        if let Some(p) = commit_pause() {
            set.pause_between_renames(p);
        }
        Ok(Outputs { set, prefix, ds, scale, ext })
    }

    /// The prefix the outputs' temporaries have until the commit: a report read from it sees
    /// the run's files before they are renamed.
    pub fn temporaries_prefix(&self) -> String {
        voxflip_io::temps::temp_name(std::path::Path::new(self.prefix)).display().to_string()
    }

    /// The sidecar `{prefix}_voxflip.json`: renamed last, the mark of a complete set.
    pub fn sidecar(&mut self, json: &str) -> Result<()> {
        let path = self.path("voxflip", ".json");
        Ok(self.set.write_marker(&path, json)?)
    }

    /// randomise's output file `{prefix}_{what}{ext}`.
    pub fn path(&self, what: &str, ext: &str) -> PathBuf {
        PathBuf::from(format!("{}_{what}{ext}", self.prefix))
    }

    /// `{prefix}_{what}.nii.gz` (or FSLOUTPUTTYPE's extension): in-mask values on the full grid (0 outside the mask).
    /// Compressed and written in the background (the next contrast runs meanwhile); a
    /// failure surfaces at [`Outputs::commit`].
    pub fn map(&mut self, what: &str, values: &[f32]) -> Result<()> {
        self.map_full_owned(what, self.ds.expand(values));
        Ok(())
    }

    /// `{prefix}_{what}.nii.gz`: a map already on the full grid (in the background, as
    /// [`Outputs::map`]).
    pub fn map_full(&mut self, what: &str, values: &[f32]) -> Result<()> {
        self.map_full_owned(what, values.to_vec());
        Ok(())
    }

    /// `{prefix}_{what}.nii.gz`: a 4D image of in-mask maps, one volume each (in the
    /// background, as [`Outputs::map`]).
    pub fn volumes(&mut self, what: &str, maps: &[Vec<f32>]) -> Result<()> {
        let data: Vec<f32> = maps.iter().flat_map(|m| self.ds.expand(m)).collect();
        let path = self.path(what, ".nii.gz");
        self.set.write_image_later(&path, &self.ds.reference, self.ds.dims, maps.len(), data);
        Ok(())
    }

    fn map_full_owned(&mut self, what: &str, values: Vec<f32>) {
        let path = self.path(what, self.ext);
        self.set.write_image_later(&path, &self.ds.reference, self.ds.dims, 1, values);
    }

    /// Wait for the maps still being written in the background (their first error).
    pub fn wait(&self) -> Result<()> {
        Ok(self.set.wait()?)
    }

    /// `{prefix}_{what}.nii.gz` of p-values in the run's convention (1 - p, or -log10 p).
    pub fn p_map(&mut self, what: &str, p: &[f64]) -> Result<()> {
        let m: Vec<f32> = p.iter().map(|&p| self.scale.apply(p)).collect();
        self.map(what, &m)
    }

    /// `{prefix}_{what}.txt`: a null distribution, one value per line.
    pub fn null(&mut self, what: &str, values: &[f32]) -> Result<()> {
        let text: String = values.iter().map(|x| format!("{x}\n")).collect();
        self.text(what, ".txt", &text)
    }

    /// `{prefix}_{what}{ext}` holding `text`.
    pub fn text(&mut self, what: &str, ext: &str, text: &str) -> Result<()> {
        let path = self.path(what, ext);
        self.set.write_text(&path, text)?;
        Ok(())
    }

    /// A temporary to write `final_path` into yourself; renamed with the rest.
    pub fn temp_for(&mut self, final_path: &std::path::Path) -> PathBuf {
        self.set.temp_for(final_path)
    }

    /// The final paths of everything written so far.
    pub fn planned(&self) -> Vec<PathBuf> {
        self.set.planned()
    }

    /// Rename everything into place.
    pub fn commit(self) -> Result<Vec<PathBuf>> {
        Ok(self.set.commit()?)
    }
}

/// The mask graphs of a run, one per connectivity (and TFCE's, with its edge rule), built on
/// first use.
pub struct Graphs<'a> {
    ds: &'a Dataset,
    graphs: Vec<MaskGraph>,
    tfce: Option<MaskGraph>,
}

impl<'a> Graphs<'a> {
    pub fn new(ds: &'a Dataset) -> Self {
        Graphs { ds, graphs: Vec::new(), tfce: None }
    }

    /// Builds TFCE's graph of connectivity `conn` (one per run): with `edge` Skip, the
    /// grid's outermost layer left out as randomise does.
    pub fn ensure_tfce(&mut self, conn: Connectivity, edge: TfceEdge) {
        if self.tfce.as_ref().is_none_or(|g| g.connectivity() != conn) {
            let g = MaskGraph::new(self.ds.dims, self.ds.voxels.clone(), conn);
            self.tfce = Some(if edge == TfceEdge::Skip { g.without_grid_border() } else { g });
        }
    }

    /// TFCE's graph (after [`Graphs::ensure_tfce`]).
    pub fn tfce(&self) -> Option<&MaskGraph> {
        self.tfce.as_ref()
    }

    /// Builds the graph of connectivity `conn` if it is not there yet.
    pub fn ensure(&mut self, conn: Connectivity) {
        if !self.graphs.iter().any(|g| g.connectivity() == conn) {
            self.graphs.push(MaskGraph::new(self.ds.dims, self.ds.voxels.clone(), conn));
        }
    }

    /// The graph of connectivity `conn` (after [`Graphs::ensure`]).
    pub fn get(&self, conn: Connectivity) -> Option<&MaskGraph> {
        self.graphs.iter().find(|g| g.connectivity() == conn)
    }
}

/// One corrected map whose clusters go into the tables.
pub struct ClusterTableJob {
    /// vox, tfce, clustere or clusterm.
    pub correction: &'static str,
    /// tstat1, fstat1, ...
    pub contrast: String,
    pub stat: Vec<f32>,
    /// Corrected p per voxel.
    pub corrp: Vec<f64>,
    /// The cluster-forming threshold (cluster inference), or None: the clusters of voxels
    /// with corrected p <= 0.05 (voxelwise and TFCE maps).
    pub threshold: Option<f32>,
}

/// `{out}_clusters_{contrast}.tsv` (clusters of each corrected map) and
/// `{out}_lmax_{contrast}.tsv` (local maxima within them), like FSL's `cluster` tool,
/// clusters 26-connected.
/// One label column per atlas (see `labels`).
pub fn write_cluster_tables(
    out: &mut Outputs,
    graphs: &mut Graphs,
    jobs: &[ClusterTableJob],
    atlases: &[voxflip_atlas::Atlas],
) -> Result<()> {
    graphs.ensure(Connectivity::C26);
    let g = graphs.get(Connectivity::C26).expect("built above");
    let ds = out.ds;
    let mut by_contrast: Vec<(String, String, String)> = Vec::new();
    for job in jobs {
        let (map, t): (Vec<f32>, f32) = match job.threshold {
            Some(thr) => (job.stat.clone(), thr),
            None => (
                job.stat.iter().zip(&job.corrp).map(|(&x, &p)| if p <= 0.05 { x } else { f32::NEG_INFINITY }).collect(),
                f32::MIN,
            ),
        };
        let pcf: Vec<f32> = job.corrp.iter().map(|&p| p as f32).collect();
        let table = cluster_table(g, &map, t, &pcf, &ds.affine, ds.voxel_volume());
        let lmax = local_maxima_table(g, &map, t, &pcf, &ds.affine, 3, 8.0);
        let at = match by_contrast.iter().position(|e| e.0 == job.contrast) {
            Some(i) => i,
            None => {
                by_contrast.push((job.contrast.clone(), String::new(), String::new()));
                by_contrast.len() - 1
            }
        };
        let entry = &mut by_contrast[at];
        prefix_rows(&mut entry.1, job.correction, &table);
        prefix_rows(&mut entry.2, job.correction, &lmax);
    }
    for (name, table, lmax) in by_contrast {
        out.text(&format!("clusters_{name}"), ".tsv", &crate::labels::with_labels(&table, atlases))?;
        out.text(&format!("lmax_{name}"), ".tsv", &crate::labels::with_labels(&lmax, atlases))?;
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
