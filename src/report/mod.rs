//! `{prefix}_report.html`: one self-contained page that shows what a run found — the run
//! and its design, per contrast and correction the significant voxels on a background
//! (slice mosaic, orthogonal view through the peak, glass brain), the null of the maximum
//! statistic, the cluster and peak tables with anatomical labels, and the warnings a
//! reviewer would raise.
//!
//! It is always built from the run's files (sidecar, maps, tables), so the report a run
//! writes and the one `voxflip report PREFIX` rebuilds are the same. Pictures come from
//! voxflip-report; this module reads the files and lays the page out.
mod html;
mod sidecar;

use crate::error::{Error, Result};
use crate::options::ReportOptions;
pub use sidecar::read_sidecar;
use std::path::{Path, PathBuf};
use voxflip_report::Volume;

/// `{prefix}_report.html`.
pub fn default_path(prefix: &str) -> PathBuf {
    PathBuf::from(format!("{prefix}_report.html"))
}

/// Build the report of the run with output prefix `prefix` and write it to `path`
/// (atomically: a temporary renamed into place).
pub fn write(prefix: &str, opts: &ReportOptions, path: &Path) -> Result<()> {
    let page = build(prefix, opts)?;
    let mut set = voxflip_io::OutputSet::new();
    set.write_text(path, &page)?;
    set.commit()?;
    Ok(())
}

/// The report's HTML.
pub fn build(prefix: &str, opts: &ReportOptions) -> Result<String> {
    build_from(prefix, prefix, opts)
}

/// The report of the run with output prefix `prefix`, read from the files at `files`: the
/// prefix itself, or the prefix of the run's temporaries before they are committed.
pub fn build_from(files: &str, prefix: &str, opts: &ReportOptions) -> Result<String> {
    let sidecar = read_sidecar(files)?;
    let atlases = crate::labels::open_atlases(&opts.atlases)?;
    let background = match &opts.background {
        Some(p) => Background { volume: volume(p)?, what: format!("background: {}", p.display()) },
        None => {
            let mean = map_path(files, &sidecar, "mean");
            if mean.exists() {
                Background { volume: volume(&mean)?, what: "background: the mean of the analysed images".into() }
            } else {
                // A run with --no-report kept no mean image: the mask's silhouette.
                let stat = volume(&map_path(files, &sidecar, &sidecar.contrasts[0].name))?;
                let data = stat.data.iter().map(|&x| f32::from(u8::from(x != 0.0))).collect();
                Background {
                    volume: Volume { data, ..stat },
                    what: "background: the analysed voxels (the run kept no mean image)".into(),
                }
            }
        }
    };
    html::page(files, prefix, &sidecar, &background, &atlases)
}

/// The picture everything is drawn on, and what it is.
pub struct Background {
    pub volume: Volume,
    pub what: String,
}

/// `{prefix}_{what}` with the extension the run wrote its images with (FSLOUTPUTTYPE):
/// `.nii` when the sidecar lists its first statistic map so, else `.nii.gz`. From the
/// sidecar rather than from what is on disk, so that the maps of an earlier run with the
/// same prefix and the other extension are never mistaken for this run's.
fn map_path(prefix: &str, sidecar: &crate::summary::RunReport, what: &str) -> PathBuf {
    let first = format!("_{}.nii", sidecar.contrasts[0].name);
    let ext = if sidecar.outputs.iter().any(|o| o.to_string_lossy().ends_with(&first)) { ".nii" } else { ".nii.gz" };
    PathBuf::from(format!("{prefix}_{what}{ext}"))
}

/// The first volume of a NIfTI image, with its grid.
fn volume(path: &Path) -> Result<Volume> {
    let img = voxflip_io::read_image(path)?;
    if img.nvol != 1 {
        log::info!("{}: {} volumes; the report shows the first", path.display(), img.nvol);
    }
    let n = img.nvox();
    let mut data = img.data;
    data.truncate(n);
    Ok(Volume { dims: img.dims, affine: img.affine, data })
}

/// An output the report needs that is not there.
fn missing(path: &Path) -> Error {
    Error::input(path, "missing: the report needs this output of the run")
}
