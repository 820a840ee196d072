//! NIfTI-1/2 input (any datatype, scl_slope/inter applied) and float32 .nii.gz output
//! carrying the reference image's sform and qform.
use crate::error::{Error, Result};
use std::path::Path;

/// An image read from disk: 3D or 4D, data as f32 with x fastest, then y, z, t.
#[derive(Clone, Debug)]
pub struct Image {
    /// Spatial dimensions (nx, ny, nz).
    pub dims: [usize; 3],
    /// Number of volumes (1 for a 3D image).
    pub nvol: usize,
    /// Voxel sizes in mm (pixdim[1..4]).
    pub pixdim: [f32; 3],
    /// Voxel (i,j,k) -> world (x,y,z) mm: the sform if sform_code > 0, else the qform,
    /// else the pixdim scaling. Row-major 3x4.
    pub affine: [[f64; 4]; 3],
    /// The header as read (NIfTI-1 form), used as the reference when writing outputs.
    pub header: nifti::NiftiHeader,
    /// Data, x fastest: index = x + nx*(y + ny*(z + nz*t)).
    pub data: Vec<f32>,
}

impl Image {
    pub fn nvox(&self) -> usize {
        self.dims[0] * self.dims[1] * self.dims[2]
    }
    /// The t-th volume.
    pub fn volume(&self, t: usize) -> &[f32] {
        let n = self.nvox();
        &self.data[t * n..(t + 1) * n]
    }
}

/// Read a .nii or .nii.gz (NIfTI-1 or NIfTI-2). Errors name the file and the problem.
pub fn read_image(path: &Path) -> Result<Image> {
    let _ = path;
    Err(Error::input(path, "not implemented"))
}

/// Write a 3D float32 map (.nii.gz) to `path` with the reference header's sform/qform,
/// pixdims and units. `data` is x fastest. Writes exactly `path` (callers handle atomicity).
pub fn write_map(path: &Path, reference: &nifti::NiftiHeader, dims: [usize; 3], data: &[f32]) -> Result<()> {
    let _ = (path, reference, dims, data);
    Err(Error::output(path, "not implemented"))
}
