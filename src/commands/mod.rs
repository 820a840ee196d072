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
