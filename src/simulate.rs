//! simulate (stub until the sim branch lands).
use std::path::{Path, PathBuf};
pub enum SimGrid { Mni2mm, Small }
pub struct SimConfig { pub grid: SimGrid, pub n_a: usize, pub n_b: usize, pub seed: u64 }
impl Default for SimConfig { fn default() -> Self { unimplemented!() } }
pub struct SimData { pub groups: Vec<String> }
pub fn simulate(_c: &SimConfig) -> SimData { unimplemented!() }
pub fn write_dataset(_d: &SimData, _p: &Path) -> crate::Result<Vec<PathBuf>> { unimplemented!() }
