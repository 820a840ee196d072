//! NIfTI-1/2 images: input of any datatype with scl_slope/inter applied ([`read`]), float32
//! .nii/.nii.gz output carrying the reference image's sform and qform ([`write`]), and the
//! voxel-to-world transforms both need ([`affine`]).
//!
//! Reading: the whole file is decompressed into memory and parsed here rather than through
//! the `nifti` crate's volume readers, because (a) the crate does not read NIfTI-2, (b) we
//! must never panic on truncated or corrupt input and must say which file is broken, and
//! (c) one decoding path for both versions keeps scaling and byte order handled in one place.
//! The NIfTI-1 header itself is parsed by `nifti::NiftiHeader::from_reader`; a NIfTI-2
//! header is parsed by hand and converted to the same `NiftiHeader` (NIfTI-1 form) so that
//! outputs can always be written with it.
//!
//! Writing serializes a cleaned copy of the reference header (float32, no scaling, no intent
//! or display range, descrip "voxflip") and the data, gzip-compressed for .nii.gz.
mod affine;
mod read;
mod write;

#[cfg(test)]
mod tests;

pub use affine::header_from_affine;
pub use read::read_image;
pub(crate) use write::write_temporary;
pub use write::{write_image, write_map};

/// A NIfTI header (NIfTI-1 form), as read and as used for writing outputs.
pub type Header = nifti::NiftiHeader;

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
    pub header: Header,
    /// Data, x fastest: index = x + nx*(y + ny*(z + nz*t)).
    pub data: Vec<f32>,
}

impl Image {
    /// Voxels per volume (nx * ny * nz).
    pub fn nvox(&self) -> usize {
        self.dims[0] * self.dims[1] * self.dims[2]
    }
    /// The t-th volume (panics if `t >= nvol`, like slice indexing).
    pub fn volume(&self, t: usize) -> &[f32] {
        let n = self.nvox();
        &self.data[t * n..(t + 1) * n]
    }
}
