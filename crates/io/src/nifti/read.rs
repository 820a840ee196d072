//! Reading NIfTI-1 and NIfTI-2 files of any supported datatype into f32.
use super::affine::affine_of;
use super::Image;
use crate::error::{io_msg, Error, Result};
use nifti::{Endianness, NiftiHeader};
use rayon::prelude::*;
use std::io::Read;
use std::path::Path;

/// NIfTI datatype codes this reader decodes (the same codes in NIfTI-1 and NIfTI-2).
const DT_UINT8: i64 = 2;
const DT_INT16: i64 = 4;
const DT_INT32: i64 = 8;
const DT_FLOAT32: i64 = 16;
const DT_FLOAT64: i64 = 64;
const DT_INT8: i64 = 256;
const DT_UINT16: i64 = 512;
const DT_UINT32: i64 = 768;
const DT_INT64: i64 = 1024;
const DT_UINT64: i64 = 1280;

/// Bytes per element for a supported datatype; `None` for the rest (complex, RGB, float128).
fn datatype_size(dt: i64) -> Option<usize> {
    Some(match dt {
        DT_UINT8 | DT_INT8 => 1,
        DT_INT16 | DT_UINT16 => 2,
        DT_INT32 | DT_UINT32 | DT_FLOAT32 => 4,
        DT_FLOAT64 | DT_INT64 | DT_UINT64 => 8,
        _ => return None,
    })
}

/// A name for the datatype code, so "unsupported datatype" messages are readable.
fn datatype_name(dt: i64) -> String {
    let name = match dt {
        0 => "unknown",
        1 => "binary",
        32 => "complex64",
        128 => "RGB24",
        1536 => "float128",
        1792 => "complex128",
        2048 => "complex256",
        2304 => "RGBA32",
        _ => return format!("code {dt}"),
    };
    format!("{name} (code {dt})")
}

/// The parts of either header version that reading needs, in wide types.
struct Layout {
    /// dim[0..8] as stored (dim[0] = number of dimensions).
    dim: [i64; 8],
    datatype: i64,
    vox_offset: u64,
    /// Minimum legal vox_offset for this version (header plus 4-byte extension flag).
    min_offset: u64,
    scl_slope: f64,
    scl_inter: f64,
    big_endian: bool,
}

/// Read a .nii or .nii.gz (NIfTI-1 or NIfTI-2). Errors name the file and the problem.
///
/// The name is resolved as FSL tools resolve it ([`crate::names::resolve_image`]: `-i data`
/// reads data.nii.gz or data.nii). Compression is detected from the gzip magic bytes, not
/// the file name, so a mislabelled file still reads. scl_slope/scl_inter are applied as the
/// NIfTI standard says (see [`scaling`]), computing in f64 before rounding to f32; a header
/// with fields no writer produces (scale factors, transform codes, voxel sizes, vox_offset)
/// is refused naming the field ([`check_geometry`]).
///
/// A gzip file that voxflip wrote is inflated in parallel first; any other is inflated as
/// one stream and converted to f32 block by block as it is read, so a 4D input never sits
/// in memory twice (as bytes and as floats).
pub fn read_image(path: &Path) -> Result<Image> {
    let path = &crate::names::resolve_image(path)?;
    let raw = std::fs::read(path).map_err(|e| Error::input(path, format!("cannot read: {}", io_msg(&e))))?;
    if raw.len() < 2 || raw[0] != 0x1f || raw[1] != 0x8b {
        return read_from(path, &mut &raw[..]);
    }
    match crate::gzip::decompress_indexed(&raw).map_err(|msg| Error::input(path, msg))? {
        Some(bytes) => read_from(path, &mut &bytes[..]),
        None => {
            // Multi-member streams (as some tools write) are read whole.
            let mut stream = flate2::read::MultiGzDecoder::new(&raw[..]);
            let img = read_from(path, &mut stream)?;
            // The rest of the stream, so a corrupt or truncated end is still found.
            std::io::copy(&mut stream, &mut std::io::sink()).map_err(|e| gzip_error(path, &e))?;
            Ok(img)
        }
    }
}

/// The error of a gzip stream that cannot be inflated.
fn gzip_error(path: &Path, e: &std::io::Error) -> Error {
    Error::input(path, format!("corrupt or truncated gzip data ({})", io_msg(e)))
}

/// Append up to `want` bytes from `src` to `buf`, fewer only at the end of the stream.
fn read_up_to(path: &Path, src: &mut impl Read, buf: &mut Vec<u8>, want: usize) -> Result<()> {
    buf.reserve(want);
    let got = (&mut *src).take(want as u64).read_to_end(buf).map_err(|e| gzip_error(path, &e))?;
    debug_assert!(got <= want);
    Ok(())
}

/// Bytes converted to f32 at a time while reading a stream (a multiple of every datatype's
/// size).
pub(super) const BLOCK_BYTES: usize = 4 << 20;

/// Parse a NIfTI file from `src` (plain bytes or an inflating stream): the header from its
/// first bytes, then the data block by block into the image's floats.
fn read_from(path: &Path, src: &mut impl Read) -> Result<Image> {
    let err = |msg: String| Error::input(path, msg);
    let mut bytes = Vec::with_capacity(544);
    read_up_to(path, src, &mut bytes, 544)?;

    if bytes.len() < 4 {
        return Err(err(format!("not a NIfTI file (only {} bytes)", bytes.len())));
    }
    let le = i32::from_le_bytes(bytes[0..4].try_into().unwrap());
    let be = i32::from_be_bytes(bytes[0..4].try_into().unwrap());
    let (layout, header) = if le == 348 || be == 348 {
        parse_nifti1(&bytes, be == 348 && le != 348).map_err(err)?
    } else if le == 540 || be == 540 {
        parse_nifti2(&bytes, be == 540 && le != 540).map_err(err)?
    } else {
        return Err(err("not a NIfTI file (header size is neither 348 nor 540)".into()));
    };

    let (dims, nvol) = shape_of(&layout.dim).map_err(err)?;
    let esize = datatype_size(layout.datatype)
        .ok_or_else(|| err(format!("unsupported datatype {}", datatype_name(layout.datatype))))?;
    let n = dims[0]
        .checked_mul(dims[1])
        .and_then(|v| v.checked_mul(dims[2]))
        .and_then(|v| v.checked_mul(nvol))
        .ok_or_else(|| err("image dimensions are too large".into()))?;
    let nbytes = n.checked_mul(esize).ok_or_else(|| err("image dimensions are too large".into()))?;
    let offset = layout.vox_offset.max(layout.min_offset);
    let offset = usize::try_from(offset).map_err(|_| err("vox_offset is too large".into()))?;
    let scale = scaling(layout.scl_slope, layout.scl_inter).map_err(err)?;
    check_geometry(&header).map_err(err)?;
    // Up to the data: what the header read took beyond it stays, the rest is skipped.
    if offset > bytes.len() {
        let skip = (offset - bytes.len()) as u64;
        let skipped =
            std::io::copy(&mut (&mut *src).take(skip), &mut std::io::sink()).map_err(|e| gzip_error(path, &e))?;
        if skipped < skip {
            bytes.clear();
        }
    }
    let mut block = bytes.split_off(offset.min(bytes.len()));
    let mut data = vec![0f32; n];
    let mut done = 0;
    while done < nbytes {
        let want = (nbytes - done).min(BLOCK_BYTES);
        let missing = want - block.len().min(want);
        read_up_to(path, src, &mut block, missing)?;
        if block.len() < want {
            let available = done + block.len();
            return Err(err(format!(
                "data shorter than the header says (expected {nbytes} bytes after offset {offset}, found {available}): truncated file?"
            )));
        }
        let rest = block.split_off(want);
        decode(&block, layout.datatype, layout.big_endian, scale, &mut data[done / esize..(done + want) / esize]);
        done += want;
        block = rest;
    }

    let pixdim = [header.pixdim[1], header.pixdim[2], header.pixdim[3]];
    let affine = affine_of(&header);
    Ok(Image { dims, nvol, pixdim, affine, header, data })
}

/// NIfTI-1: header via the nifti crate, after checking the magic and that the byte order
/// the crate inferred (from dim[0]) agrees with the one sizeof_hdr implies.
fn parse_nifti1(bytes: &[u8], big_endian: bool) -> std::result::Result<(Layout, NiftiHeader), String> {
    if bytes.len() < 348 {
        return Err(format!("truncated NIfTI-1 header ({} of 348 bytes)", bytes.len()));
    }
    match &bytes[344..348] {
        b"n+1\0" => {}
        b"ni1\0" => return Err("header/image pairs (.hdr/.img) are not supported; convert to .nii".into()),
        _ => return Err("not a NIfTI file (bad magic)".into()),
    }
    let h = NiftiHeader::from_reader(&bytes[..348]).map_err(|e| format!("corrupt NIfTI-1 header ({e})"))?;
    let crate_big = h.endianness == Endianness::Big;
    if crate_big != big_endian {
        return Err(format!("corrupt NIfTI-1 header (invalid dim[0] = {})", h.dim[0]));
    }
    let mut dim = [0i64; 8];
    for (d, &v) in dim.iter_mut().zip(h.dim.iter()) {
        // dim is signed short in the standard; the crate reads it unsigned.
        *d = v as i16 as i64;
    }
    let vox_offset = h.vox_offset;
    if !(vox_offset.is_finite() && vox_offset >= 0.0 && vox_offset.fract() == 0.0) {
        return Err(format!("invalid vox_offset = {vox_offset} (the data's byte offset must be a whole number >= 0)"));
    }
    let vox_offset = vox_offset as u64;
    let layout = Layout {
        dim,
        datatype: h.datatype as i64,
        vox_offset,
        min_offset: 352,
        scl_slope: h.scl_slope as f64,
        scl_inter: h.scl_inter as f64,
        big_endian,
    };
    Ok((layout, h))
}

/// Fixed-offset reads from a header in a given byte order.
struct Fields<'a> {
    b: &'a [u8],
    big: bool,
}

impl Fields<'_> {
    fn arr<const N: usize>(&self, off: usize) -> [u8; N] {
        self.b[off..off + N].try_into().unwrap()
    }
    fn i32(&self, off: usize) -> i32 {
        let a = self.arr(off);
        if self.big {
            i32::from_be_bytes(a)
        } else {
            i32::from_le_bytes(a)
        }
    }
    fn i64(&self, off: usize) -> i64 {
        let a = self.arr(off);
        if self.big {
            i64::from_be_bytes(a)
        } else {
            i64::from_le_bytes(a)
        }
    }
    fn i16(&self, off: usize) -> i16 {
        let a = self.arr(off);
        if self.big {
            i16::from_be_bytes(a)
        } else {
            i16::from_le_bytes(a)
        }
    }
    fn f64(&self, off: usize) -> f64 {
        let a = self.arr(off);
        if self.big {
            f64::from_be_bytes(a)
        } else {
            f64::from_le_bytes(a)
        }
    }
}

/// NIfTI-2: parse the 540-byte header by hand and build the equivalent NIfTI-1 header.
fn parse_nifti2(bytes: &[u8], big_endian: bool) -> std::result::Result<(Layout, NiftiHeader), String> {
    if bytes.len() < 540 {
        return Err(format!("truncated NIfTI-2 header ({} of 540 bytes)", bytes.len()));
    }
    if &bytes[4..12] != b"n+2\0\r\n\x1a\n" {
        return Err("not a NIfTI file (bad magic)".into());
    }
    let f = Fields { b: bytes, big: big_endian };
    let datatype = f.i16(12) as i64;
    let mut dim = [0i64; 8];
    for (i, d) in dim.iter_mut().enumerate() {
        *d = f.i64(16 + 8 * i);
    }
    let mut pixdim = [0f32; 8];
    for (i, p) in pixdim.iter_mut().enumerate() {
        *p = f.f64(104 + 8 * i) as f32;
    }
    let vox_offset = f.i64(168);
    if vox_offset < 0 {
        return Err(format!("invalid vox_offset = {vox_offset} (the data's byte offset must be >= 0)"));
    }
    let scl_slope = f.f64(176);
    let scl_inter = f.f64(184);
    let srow = |off: usize| [f.f64(off) as f32, f.f64(off + 8) as f32, f.f64(off + 16) as f32, f.f64(off + 24) as f32];

    // The NIfTI-1 form stores dims as 16-bit; validate the shape first so the messages
    // about 5D or zero-sized images take precedence over this representation limit.
    shape_of(&dim)?;
    let mut dim16 = [1u16; 8];
    for (i, &d) in dim.iter().enumerate() {
        if i <= dim[0] as usize {
            dim16[i] = u16::try_from(d)
                .ok()
                .filter(|&v| v <= i16::MAX as u16)
                .ok_or_else(|| format!("dimension {d} is too large (at most {} supported)", i16::MAX))?;
        }
    }
    let clamp16 = |v: i64| v.clamp(i16::MIN as i64, i16::MAX as i64) as i16;
    let header = NiftiHeader {
        sizeof_hdr: 348,
        dim_info: bytes[524],
        dim: dim16,
        intent_p1: f.f64(80) as f32,
        intent_p2: f.f64(88) as f32,
        intent_p3: f.f64(96) as f32,
        intent_code: clamp16(f.i32(504) as i64),
        datatype: clamp16(datatype),
        bitpix: f.i16(14),
        slice_start: clamp16(f.i64(224)),
        pixdim,
        vox_offset: 352.0,
        scl_slope: scl_slope as f32,
        scl_inter: scl_inter as f32,
        slice_end: clamp16(f.i64(232)),
        slice_code: f.i32(496).clamp(0, 255) as u8,
        xyzt_units: f.i32(500).clamp(0, 255) as u8,
        cal_max: f.f64(192) as f32,
        cal_min: f.f64(200) as f32,
        slice_duration: f.f64(208) as f32,
        toffset: f.f64(216) as f32,
        descrip: bytes[240..320].to_vec(),
        aux_file: bytes[320..344].try_into().unwrap(),
        qform_code: clamp16(f.i32(344) as i64),
        sform_code: clamp16(f.i32(348) as i64),
        quatern_b: f.f64(352) as f32,
        quatern_c: f.f64(360) as f32,
        quatern_d: f.f64(368) as f32,
        quatern_x: f.f64(376) as f32,
        quatern_y: f.f64(384) as f32,
        quatern_z: f.f64(392) as f32,
        srow_x: srow(400),
        srow_y: srow(432),
        srow_z: srow(464),
        intent_name: bytes[508..524].try_into().unwrap(),
        magic: *b"n+1\0",
        endianness: Endianness::Little,
        ..NiftiHeader::default()
    };
    let layout = Layout {
        dim,
        datatype,
        vox_offset: vox_offset.max(0) as u64,
        min_offset: 544,
        scl_slope,
        scl_inter,
        big_endian,
    };
    Ok((layout, header))
}

/// The (slope, intercept) to apply, or None for "no scaling".
///
/// NIfTI: scl_slope = 0 means no scaling (the intercept is then ignored). A NaN slope
/// with a NaN or zero intercept is also "no scaling": nibabel writes NaN into both for
/// unscaled data, and niftilib reads any non-finite factor as 0. Anything else that is not a
/// finite, normal number (an infinite factor, a NaN slope beside a real intercept, a
/// subnormal slope that would flush the data to 0, a NaN intercept beside a real slope) is
/// a garbled header, refused naming the field.
fn scaling(slope: f64, inter: f64) -> std::result::Result<Option<(f64, f64)>, String> {
    let bad = |field: &str, v: f64| Err(format!("invalid {field} = {v} (not a usable scale factor): corrupt header?"));
    if slope == 0.0 {
        return Ok(None);
    }
    if slope.is_nan() {
        return if inter.is_nan() || inter == 0.0 { Ok(None) } else { bad("scl_slope", slope) };
    }
    if !slope.is_finite() || slope.abs() < f32::MIN_POSITIVE as f64 {
        return bad("scl_slope", slope);
    }
    if !inter.is_finite() {
        return bad("scl_inter", inter);
    }
    Ok(Some((slope, inter)))
}

/// The transform codes must be NIfTI's (0..=4), and the voxel sizes and the transform the
/// image's affine comes from finite: otherwise outputs would copy garbage into their headers.
fn check_geometry(h: &NiftiHeader) -> std::result::Result<(), String> {
    for (field, code) in [("qform_code", h.qform_code), ("sform_code", h.sform_code)] {
        if !(0..=4).contains(&code) {
            return Err(format!("invalid {field} = {code} (NIfTI's codes are 0 to 4): corrupt header?"));
        }
    }
    if let Some(i) = (1..=3).find(|&i| !h.pixdim[i].is_finite()) {
        return Err(format!("invalid pixdim[{i}] = {} (voxel sizes must be finite): corrupt header?", h.pixdim[i]));
    }
    let (field, finite) = if h.sform_code > 0 {
        ("srow_x/y/z", h.srow_x.iter().chain(&h.srow_y).chain(&h.srow_z).all(|v| v.is_finite()))
    } else {
        let q = [h.quatern_b, h.quatern_c, h.quatern_d, h.quatern_x, h.quatern_y, h.quatern_z];
        ("quatern_b/c/d/x/y/z", h.qform_code == 0 || q.iter().all(|v| v.is_finite()))
    };
    if !finite {
        return Err(format!("invalid {field}: the transform holds NaN or Inf: corrupt header?"));
    }
    Ok(())
}

/// Spatial dims and volume count from a dim[] array; 5D+ (any dim[5..] > 1) is refused,
/// as is any zero or negative extent in the used dimensions.
fn shape_of(dim: &[i64; 8]) -> std::result::Result<([usize; 3], usize), String> {
    let nd = dim[0];
    if !(1..=7).contains(&nd) {
        return Err(format!("invalid number of dimensions (dim[0] = {nd})"));
    }
    let nd = nd as usize;
    let used = &dim[1..=nd];
    if used.iter().any(|&d| d <= 0) {
        return Err(format!("zero-sized or negative dimension (dim = {:?})", used));
    }
    if nd > 4 && used[4..].iter().any(|&d| d > 1) {
        return Err(format!("5D images are not supported (dim = {:?})", used));
    }
    let get = |i: usize| if i <= nd { dim[i] as usize } else { 1 };
    Ok(([get(1), get(2), get(3)], get(4)))
}

/// Convert raw voxel bytes to f32 into `out`, applying (slope, inter) in f64 when given;
/// in pieces on every core.
fn decode(raw: &[u8], dt: i64, big: bool, scale: Option<(f64, f64)>, out: &mut [f32]) {
    const BLOCK: usize = 1 << 16;
    macro_rules! conv {
        ($t:ty, $n:expr) => {{
            out.par_chunks_mut(BLOCK).zip(raw.par_chunks(BLOCK * $n)).for_each(|(dst, src)| {
                let it = src.chunks_exact($n).map(|c| {
                    let a: [u8; $n] = c.try_into().unwrap();
                    if big {
                        <$t>::from_be_bytes(a)
                    } else {
                        <$t>::from_le_bytes(a)
                    }
                });
                match scale {
                    Some((s, i)) => dst.iter_mut().zip(it).for_each(|(d, v)| *d = (v as f64 * s + i) as f32),
                    None => dst.iter_mut().zip(it).for_each(|(d, v)| *d = v as f32),
                }
            });
        }};
    }
    match dt {
        DT_UINT8 => conv!(u8, 1),
        DT_INT8 => conv!(i8, 1),
        DT_INT16 => conv!(i16, 2),
        DT_UINT16 => conv!(u16, 2),
        DT_INT32 => conv!(i32, 4),
        DT_UINT32 => conv!(u32, 4),
        DT_FLOAT32 => conv!(f32, 4),
        DT_FLOAT64 => conv!(f64, 8),
        DT_INT64 => conv!(i64, 8),
        DT_UINT64 => conv!(u64, 8),
        _ => unreachable!("datatype checked by datatype_size"),
    }
}
