//! FSL VEST text matrices (stub until the io branch lands).
use crate::error::Result;
use std::path::Path;
pub struct Vest { pub rows: Vec<Vec<f64>>, pub ncols: usize, pub names: Vec<String> }
pub fn read_design(_p: &Path) -> Result<Vest> { unimplemented!() }
pub fn read_contrasts(_p: &Path) -> Result<Vest> { unimplemented!() }
pub fn read_fts(_p: &Path) -> Result<Vest> { unimplemented!() }
