//! Writing float32 .nii / .nii.gz images with a reference header's geometry.
use crate::error::{io_msg, Error, Result};
use nifti::Endianness;
use std::path::Path;

/// Write a 3D float32 map (.nii.gz) to `path` with the reference header's sform/qform,
/// pixdims and units. `data` is x fastest. Writes exactly `path` (callers handle atomicity).
pub fn write_map(path: &Path, reference: &nifti::NiftiHeader, dims: [usize; 3], data: &[f32]) -> Result<()> {
    write_image(path, reference, dims, 1, data)
}

/// Write a 3D (nvol = 1) or 4D float32 image to `path` (.nii.gz compressed, .nii not),
/// data x fastest, then y, z, t. The header is the reference's (sform and qform with their
/// codes, pixdim, xyzt_units, dim_info) with datatype float32, scl_slope 1, scl_inter 0,
/// descrip "voxflip", and the reference's intent and display range cleared, because they
/// described the input data, not this output. Writes exactly `path`.
pub fn write_image(
    path: &Path,
    reference: &nifti::NiftiHeader,
    dims: [usize; 3],
    nvol: usize,
    data: &[f32],
) -> Result<()> {
    use ndarray::{ArrayView3, ArrayView4, ShapeBuilder};
    let err = |msg: String| Error::output(path, msg);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // The nifti writer derives the file name and compression from the extension; insisting
    // on these two extensions is what makes "writes exactly `path`" true.
    if !(name.ends_with(".nii.gz") || name.ends_with(".nii")) || name == ".nii" || name == ".nii.gz" {
        return Err(err("output file name must end in .nii or .nii.gz".into()));
    }
    let limit = i16::MAX as usize;
    if dims.iter().chain(std::iter::once(&nvol)).any(|&d| d == 0 || d > limit) {
        return Err(err(format!(
            "invalid dimensions {}x{}x{}x{} (each must be 1..={limit})",
            dims[0], dims[1], dims[2], nvol
        )));
    }
    let n = dims[0] * dims[1] * dims[2] * nvol;
    if data.len() != n {
        return Err(err(format!("data has {} values, dimensions need {n}", data.len())));
    }

    let mut h = reference.clone();
    h.datatype = 16;
    h.bitpix = 32;
    h.scl_slope = 1.0;
    h.scl_inter = 0.0;
    h.intent_code = 0;
    h.intent_p1 = 0.0;
    h.intent_p2 = 0.0;
    h.intent_p3 = 0.0;
    h.intent_name = [0; 16];
    h.cal_max = 0.0;
    h.cal_min = 0.0;
    h.glmax = 0;
    h.glmin = 0;
    h.aux_file = [0; 24];
    h.endianness = Endianness::Little;
    h.magic = *b"n+1\0";
    h.sizeof_hdr = 348;
    if (h.pixdim[0].abs() - 1.0).abs() > 1e-6 {
        h.pixdim[0] = 1.0;
    }
    h.set_description_str("voxflip").expect("short description");

    let (nx, ny, nz) = (dims[0], dims[1], dims[2]);
    let opts = nifti::writer::WriterOptions::new(path).reference_header(&h);
    // Fortran-order views: element [x, y, z(, t)] is data[x + nx*(y + ny*(z + nz*t))], which
    // the writer emits x fastest, as NIfTI stores it.
    let res = if nvol == 1 {
        let v = ArrayView3::from_shape((nx, ny, nz).f(), data).map_err(|e| err(e.to_string()))?;
        opts.write_nifti(&v)
    } else {
        let v = ArrayView4::from_shape((nx, ny, nz, nvol).f(), data).map_err(|e| err(e.to_string()))?;
        opts.write_nifti(&v)
    };
    res.map_err(|e| match e {
        nifti::NiftiError::Io(io) => err(io_msg(&io)),
        other => err(other.to_string().replace('\n', " ")),
    })
}
