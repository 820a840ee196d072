//! Writing float32 .nii / .nii.gz images with a reference header's geometry: the NIfTI-1
//! header (348 bytes, little-endian), an empty extension flag, the data x fastest; for
//! .nii.gz, gzip at the fastest level (as the `nifti` crate's writer uses), compressed in
//! parallel chunks by [`crate::gzip`] (one standard gzip member, the same bytes for any
//! number of threads).
use crate::error::{io_msg, Error, Result};
use nifti::{Endianness, NiftiHeader};
use std::io::Write;
use std::path::Path;

/// The deflate level of .nii.gz outputs: the fastest, as flate2's `Compression::fast()`.
const GZIP_LEVEL: u32 = 1;

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
    write_with(path, reference, dims, nvol, data, Durability::AsIs)
}

/// [`write_image`] into a temporary of an output set: created through
/// [`crate::temps::create`] (so an interrupt finds it) and fsynced before it returns, so
/// that the commit's renames never expose a file whose data is not on disk.
pub(crate) fn write_temporary(
    path: &Path,
    reference: &nifti::NiftiHeader,
    dims: [usize; 3],
    nvol: usize,
    data: &[f32],
) -> Result<()> {
    write_with(path, reference, dims, nvol, data, Durability::Temporary)
}

/// How a file is created and whether it is synced.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// `File::create`, no fsync (callers handle atomicity).
    AsIs,
    /// An output set's temporary: registered, then fsynced.
    Temporary,
}

fn write_with(
    path: &Path,
    reference: &nifti::NiftiHeader,
    dims: [usize; 3],
    nvol: usize,
    data: &[f32],
    durability: Durability,
) -> Result<()> {
    let err = |msg: String| Error::output(path, msg);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // Compression follows the extension; insisting on these two keeps names and contents
    // consistent for every reader.
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

    h.dim = [if nvol == 1 { 3 } else { 4 }, dims[0] as u16, dims[1] as u16, dims[2] as u16, nvol as u16, 1, 1, 1];
    h.vox_offset = 352.0;
    h.descrip.resize(80, 0);

    // Compressed before the file is created, so that a temporary exists only while written.
    let gz = name.ends_with(".gz").then(|| {
        let mut head = header_bytes(&h);
        head.extend_from_slice(&[0u8; 4]);
        crate::gzip::compress_with(head.len() + 4 * data.len(), GZIP_LEVEL, |r, buf| file_bytes(&head, data, r, buf))
    });
    let file = match durability {
        Durability::AsIs => std::fs::File::create(path),
        Durability::Temporary => crate::temps::create(path),
    }
    .map_err(|e| err(io_msg(&e)))?;
    let written = match gz {
        Some(gz) => {
            let mut file = file;
            file.write_all(&gz).map(|()| file)
        }
        None => {
            let mut out = std::io::BufWriter::new(file);
            write_contents(&mut out, &h, data).and_then(|()| out.into_inner().map_err(|e| e.into_error()))
        }
    };
    let synced = written.and_then(|f| if durability == Durability::Temporary { f.sync_data() } else { Ok(()) });
    synced.map_err(|e| err(io_msg(&e)))
}

/// The header, the empty extension flag, then the data as little-endian f32.
fn write_contents(out: &mut impl Write, h: &NiftiHeader, data: &[f32]) -> std::io::Result<()> {
    out.write_all(&header_bytes(h))?;
    out.write_all(&[0u8; 4])?;
    let mut buf = Vec::with_capacity(1 << 20);
    for chunk in data.chunks(1 << 18) {
        buf.clear();
        buf.extend(chunk.iter().flat_map(|x| x.to_le_bytes()));
        out.write_all(&buf)?;
    }
    Ok(())
}

/// Append bytes `r` of the file (`head`: header and extension flag, then `data` as
/// little-endian f32) to `buf`.
fn file_bytes(head: &[u8], data: &[f32], r: std::ops::Range<usize>, buf: &mut Vec<u8>) {
    let h = r.start.min(head.len())..r.end.min(head.len());
    buf.extend_from_slice(&head[h]);
    let (lo, hi) = (r.start.max(head.len()) - head.len(), r.end.max(head.len()) - head.len());
    if lo >= hi {
        return;
    }
    // The floats that hold bytes lo..hi of the data, then the part of them asked for.
    let (first, last) = (lo / 4, hi.div_ceil(4));
    let skip = lo - 4 * first;
    let start = buf.len();
    buf.extend(data[first..last].iter().flat_map(|x| x.to_le_bytes()));
    buf.drain(start..start + skip);
    buf.truncate(start + (hi - lo));
}

/// The 348 bytes of a NIfTI-1 header, little-endian, field by field in the standard's order.
fn header_bytes(h: &NiftiHeader) -> Vec<u8> {
    let mut b = Vec::with_capacity(348);
    let fixed = |b: &mut Vec<u8>, bytes: &[u8], len: usize| {
        let mut v = bytes.to_vec();
        v.resize(len, 0);
        b.extend_from_slice(&v);
    };
    b.extend(h.sizeof_hdr.to_le_bytes());
    fixed(&mut b, &h.data_type, 10);
    fixed(&mut b, &h.db_name, 18);
    b.extend(h.extents.to_le_bytes());
    b.extend(h.session_error.to_le_bytes());
    b.push(h.regular);
    b.push(h.dim_info);
    h.dim.iter().for_each(|d| b.extend(d.to_le_bytes()));
    [h.intent_p1, h.intent_p2, h.intent_p3].iter().for_each(|x| b.extend(x.to_le_bytes()));
    [h.intent_code, h.datatype, h.bitpix, h.slice_start].iter().for_each(|x| b.extend(x.to_le_bytes()));
    h.pixdim.iter().for_each(|x| b.extend(x.to_le_bytes()));
    [h.vox_offset, h.scl_slope, h.scl_inter].iter().for_each(|x| b.extend(x.to_le_bytes()));
    b.extend(h.slice_end.to_le_bytes());
    b.push(h.slice_code);
    b.push(h.xyzt_units);
    [h.cal_max, h.cal_min, h.slice_duration, h.toffset].iter().for_each(|x| b.extend(x.to_le_bytes()));
    b.extend(h.glmax.to_le_bytes());
    b.extend(h.glmin.to_le_bytes());
    fixed(&mut b, &h.descrip, 80);
    fixed(&mut b, &h.aux_file, 24);
    b.extend(h.qform_code.to_le_bytes());
    b.extend(h.sform_code.to_le_bytes());
    [h.quatern_b, h.quatern_c, h.quatern_d, h.quatern_x, h.quatern_y, h.quatern_z]
        .iter()
        .for_each(|x| b.extend(x.to_le_bytes()));
    h.srow_x.iter().chain(&h.srow_y).chain(&h.srow_z).for_each(|x| b.extend(x.to_le_bytes()));
    fixed(&mut b, &h.intent_name, 16);
    fixed(&mut b, &h.magic, 4);
    debug_assert_eq!(b.len(), 348);
    b
}
