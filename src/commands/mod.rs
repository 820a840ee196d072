//! The commands: the randomise-style GLM (no subcommand), `interaction`, `simulate`,
//! `example`, `devices` (in `cli`), `bench`, `merge` and `slurm`.
pub mod bench;
pub mod example;
pub mod glm;
pub mod interaction;
pub mod merge;
pub mod report;
pub mod simulate;
pub mod slurm;

use crate::error::Result;
use std::path::PathBuf;

/// The mask image of `-m`, if given.
fn read_mask(path: &Option<PathBuf>) -> Result<Option<voxflip_io::Image>> {
    Ok(path.as_ref().map(|p| voxflip_io::read_image(p)).transpose()?)
}

/// One line on stderr (not with --quiet) when constant voxels of the mask were left out.
fn report_constant_voxels(ds: &voxflip_io::Dataset) {
    if ds.constant_dropped > 0 {
        let mask = ds.mask_source.as_deref().map(|p| p.display().to_string()).unwrap_or_default();
        log::info!(
            "{} voxels of {mask} are constant across all images: left out of the analysis (0 in every output map; --norcmask keeps them)",
            ds.constant_dropped
        );
    }
}
