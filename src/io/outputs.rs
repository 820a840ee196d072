//! OutputSet (stub until the io branch lands).
use crate::error::Result;
use std::path::{Path, PathBuf};
#[derive(Default)]
pub struct OutputSet;
impl OutputSet {
    pub fn new() -> Self { OutputSet }
    pub fn check_dir(&self, _p: &Path) -> Result<()> { unimplemented!() }
    pub fn write_text(&mut self, _f: &Path, _s: &str) -> Result<()> { unimplemented!() }
    pub fn write_map(&mut self, _f: &Path, _r: &nifti::NiftiHeader, _d: [usize; 3], _x: &[f32]) -> Result<()> { unimplemented!() }
    pub fn commit(self) -> Result<Vec<PathBuf>> { unimplemented!() }
    pub fn planned(&self) -> Vec<PathBuf> { unimplemented!() }
}
