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

/// A NIfTI-1 header for a float32 image on the grid `dims` whose voxel -> world mapping is
/// `affine` (row-major 3x4), stored in both the sform and the qform with `xform_code`
/// (4 = MNI152), spatial units mm.
///
/// Interim implementation on the `sim` branch (the io branch owns the final one).
pub fn header_from_affine(dims: [usize; 3], pixdim: [f32; 3], affine: [[f64; 4]; 3], xform_code: i16) -> nifti::NiftiHeader {
    let mut h = nifti::NiftiHeader {
        dim: [3, dims[0] as u16, dims[1] as u16, dims[2] as u16, 1, 1, 1, 1],
        pixdim: [1.0, pixdim[0], pixdim[1], pixdim[2], 1.0, 1.0, 1.0, 1.0],
        datatype: nifti::NiftiType::Float32 as i16,
        bitpix: 32,
        xyzt_units: 2 | 8, // mm, seconds
        srow_x: affine[0].map(|v| v as f32),
        srow_y: affine[1].map(|v| v as f32),
        srow_z: affine[2].map(|v| v as f32),
        ..Default::default()
    };
    // qform: rotation of the unit columns as a quaternion (nifti1_io's mat44_to_quatern);
    // a left-handed affine (e.g. the x flip of MNI templates) flips the third column, qfac = -1.
    let mut r = [[0.0f64; 3]; 3];
    for c in 0..3 {
        let norm = (0..3).map(|i| affine[i][c] * affine[i][c]).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
        for i in 0..3 {
            r[i][c] = affine[i][c] / norm;
        }
    }
    let det = r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1]) - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
        + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
    let qfac = if det < 0.0 {
        (0..3).for_each(|i| r[i][2] = -r[i][2]);
        -1.0
    } else {
        1.0
    };
    let trace = r[0][0] + r[1][1] + r[2][2] + 1.0;
    let (mut a, mut b, mut c, mut d);
    if trace > 0.5 {
        a = 0.5 * trace.sqrt();
        b = 0.25 * (r[2][1] - r[1][2]) / a;
        c = 0.25 * (r[0][2] - r[2][0]) / a;
        d = 0.25 * (r[1][0] - r[0][1]) / a;
    } else {
        let xd = 1.0 + r[0][0] - (r[1][1] + r[2][2]);
        let yd = 1.0 + r[1][1] - (r[0][0] + r[2][2]);
        let zd = 1.0 + r[2][2] - (r[0][0] + r[1][1]);
        if xd > 1.0 {
            b = 0.5 * xd.sqrt();
            c = 0.25 * (r[0][1] + r[1][0]) / b;
            d = 0.25 * (r[0][2] + r[2][0]) / b;
            a = 0.25 * (r[2][1] - r[1][2]) / b;
        } else if yd > 1.0 {
            c = 0.5 * yd.sqrt();
            b = 0.25 * (r[0][1] + r[1][0]) / c;
            d = 0.25 * (r[1][2] + r[2][1]) / c;
            a = 0.25 * (r[0][2] - r[2][0]) / c;
        } else {
            d = 0.5 * zd.sqrt();
            b = 0.25 * (r[0][2] + r[2][0]) / d;
            c = 0.25 * (r[1][2] + r[2][1]) / d;
            a = 0.25 * (r[1][0] - r[0][1]) / d;
        }
        if a < 0.0 {
            (a, b, c, d) = (-a, -b, -c, -d);
        }
    }
    let _ = a;
    h.pixdim[0] = qfac;
    h.quatern_b = b as f32;
    h.quatern_c = c as f32;
    h.quatern_d = d as f32;
    h.quatern_x = affine[0][3] as f32;
    h.quatern_y = affine[1][3] as f32;
    h.quatern_z = affine[2][3] as f32;
    h.sform_code = xform_code;
    h.qform_code = xform_code;
    h
}

/// Write `nvol` float32 volumes on the grid `dims` (x fastest, then y, z, volume) to
/// `path` (.nii or .nii.gz) with the reference header's geometry.
///
/// Interim implementation on the `sim` branch (the io branch owns the final one).
pub fn write_image(path: &Path, reference: &nifti::NiftiHeader, dims: [usize; 3], nvol: usize, data: &[f32]) -> Result<()> {
    use ndarray::ShapeBuilder;
    let n = dims[0] * dims[1] * dims[2];
    if data.len() != n * nvol {
        return Err(Error::output(path, format!("{} values for {} volumes of {:?}", data.len(), nvol, dims)));
    }
    let writer = nifti::writer::WriterOptions::new(path).reference_header(reference);
    // The data are x fastest, i.e. Fortran order for the shape (nx, ny, nz[, nvol]).
    let res = if nvol == 1 {
        let view = ndarray::ArrayView3::from_shape((dims[0], dims[1], dims[2]).f(), data)
            .map_err(|e| Error::output(path, e.to_string()))?;
        writer.write_nifti(&view)
    } else {
        let view = ndarray::ArrayView4::from_shape((dims[0], dims[1], dims[2], nvol).f(), data)
            .map_err(|e| Error::output(path, e.to_string()))?;
        writer.write_nifti(&view)
    };
    res.map_err(|e| Error::output(path, e.to_string()))
}
