//! NIfTI-1/2 input (any datatype, scl_slope/inter applied) and float32 .nii/.nii.gz output
//! carrying the reference image's sform and qform.
//!
//! Reading: the whole file is decompressed into memory and parsed here rather than through
//! the `nifti` crate's volume readers, because (a) the crate does not read NIfTI-2, (b) we
//! must never panic on truncated or corrupt input and must say which file is broken, and
//! (c) one decoding path for both versions keeps scaling and byte order handled in one place.
//! The NIfTI-1 header itself is parsed by `nifti::NiftiHeader::from_reader`; a NIfTI-2
//! header is parsed by hand and converted to the same `NiftiHeader` (NIfTI-1 form) so that
//! outputs can always be written with it.
//!
//! Writing goes through `nifti::writer::WriterOptions` with a cleaned copy of the reference
//! header (float32, no scaling, no intent or display range, descrip "voxflip").
use crate::error::{Error, Result};
use flate2::read::MultiGzDecoder;
use nifti::{Endianness, NiftiHeader};
use std::io::Read;
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
/// Compression is detected from the gzip magic bytes, not the file name, so a mislabelled
/// file still reads. scl_slope/scl_inter are applied as the NIfTI standard says (a slope of
/// 0 or a non-finite slope means "no scaling"), computing in f64 before rounding to f32.
pub fn read_image(path: &Path) -> Result<Image> {
    let bytes = read_all(path)?;
    let err = |msg: String| Error::input(path, msg);

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
    let available = bytes.len().saturating_sub(offset);
    if available < nbytes {
        return Err(err(format!(
            "data shorter than the header says (expected {nbytes} bytes after offset {offset}, found {available}): truncated file?"
        )));
    }
    let raw = &bytes[offset..offset + nbytes];
    let scale = if layout.scl_slope != 0.0 && layout.scl_slope.is_finite() {
        let inter = if layout.scl_inter.is_finite() { layout.scl_inter } else { 0.0 };
        Some((layout.scl_slope, inter))
    } else {
        None
    };
    let data = decode(raw, layout.datatype, layout.big_endian, scale);

    let pixdim = [header.pixdim[1], header.pixdim[2], header.pixdim[3]];
    let affine = affine_of(&header);
    Ok(Image { dims, nvol, pixdim, affine, header, data })
}

/// Read the file, decompressing if it starts with the gzip magic. Multi-member gzip
/// streams (as some tools write) are read whole.
fn read_all(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::input(path, format!("cannot read: {}", io_msg(&e))))?;
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        // The gzip trailer holds the uncompressed size mod 2^32: a good capacity hint for
        // images under 4 GiB, which avoids repeated reallocation of large 4D files.
        let isize = u32::from_le_bytes(raw[raw.len().saturating_sub(4)..].try_into().unwrap_or([0; 4])) as usize;
        let hint = if isize >= raw.len() && isize / 1100 <= raw.len() { isize } else { raw.len().saturating_mul(3) };
        let mut out = Vec::with_capacity(hint);
        MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::input(path, format!("corrupt or truncated gzip data ({})", io_msg(&e))))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// A short, single-line description of an I/O error.
pub(crate) fn io_msg(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        NotFound => "no such file or directory".into(),
        PermissionDenied => "permission denied".into(),
        UnexpectedEof => "unexpected end of file".into(),
        _ => e.to_string().replace('\n', " "),
    }
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
    let vox_offset = if h.vox_offset.is_finite() && h.vox_offset > 0.0 { h.vox_offset as u64 } else { 0 };
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
        if self.big { i32::from_be_bytes(a) } else { i32::from_le_bytes(a) }
    }
    fn i64(&self, off: usize) -> i64 {
        let a = self.arr(off);
        if self.big { i64::from_be_bytes(a) } else { i64::from_le_bytes(a) }
    }
    fn i16(&self, off: usize) -> i16 {
        let a = self.arr(off);
        if self.big { i16::from_be_bytes(a) } else { i16::from_le_bytes(a) }
    }
    fn f64(&self, off: usize) -> f64 {
        let a = self.arr(off);
        if self.big { f64::from_be_bytes(a) } else { f64::from_le_bytes(a) }
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

/// Convert raw voxel bytes to f32, applying (slope, inter) in f64 when given.
fn decode(raw: &[u8], dt: i64, big: bool, scale: Option<(f64, f64)>) -> Vec<f32> {
    macro_rules! conv {
        ($t:ty, $n:expr) => {{
            let it = raw.chunks_exact($n).map(|c| {
                let a: [u8; $n] = c.try_into().unwrap();
                if big { <$t>::from_be_bytes(a) } else { <$t>::from_le_bytes(a) }
            });
            match scale {
                Some((s, i)) => it.map(|v| (v as f64 * s + i) as f32).collect(),
                None => it.map(|v| v as f32).collect(),
            }
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

/// Voxel -> world affine: sform if sform_code > 0, else qform if qform_code > 0, else
/// diag(pixdim) (NIfTI-1 "method 1").
fn affine_of(h: &NiftiHeader) -> [[f64; 4]; 3] {
    if h.sform_code > 0 {
        let r = |s: [f32; 4]| s.map(|v| v as f64);
        [r(h.srow_x), r(h.srow_y), r(h.srow_z)]
    } else if h.qform_code > 0 {
        qform_affine(h)
    } else {
        let p = |i: usize| h.pixdim[i] as f64;
        [[p(1), 0.0, 0.0, 0.0], [0.0, p(2), 0.0, 0.0], [0.0, 0.0, p(3), 0.0]]
    }
}

/// The qform matrix as nifti1_io's `nifti_quatern_to_mat44` computes it: rotation from
/// (b, c, d) with a = sqrt(1 - b²-c²-d²), columns scaled by pixdim (non-positive -> 1),
/// the third by qfac = sign of pixdim[0] (-1 if negative, else 1).
fn qform_affine(h: &NiftiHeader) -> [[f64; 4]; 3] {
    let (mut b, mut c, mut d) = (h.quatern_b as f64, h.quatern_c as f64, h.quatern_d as f64);
    let mut a = 1.0 - (b * b + c * c + d * d);
    if a < 1e-7 {
        // Special case from the standard: a 180-degree rotation; renormalise (b, c, d).
        let s = 1.0 / (b * b + c * c + d * d).sqrt();
        b *= s;
        c *= s;
        d *= s;
        a = 0.0;
    } else {
        a = a.sqrt();
    }
    let pos = |v: f32| if v > 0.0 { v as f64 } else { 1.0 };
    let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
    let (xd, yd, zd) = (pos(h.pixdim[1]), pos(h.pixdim[2]), qfac * pos(h.pixdim[3]));
    [
        [(a * a + b * b - c * c - d * d) * xd, 2.0 * (b * c - a * d) * yd, 2.0 * (b * d + a * c) * zd, h.quatern_x as f64],
        [2.0 * (b * c + a * d) * xd, (a * a + c * c - b * b - d * d) * yd, 2.0 * (c * d - a * b) * zd, h.quatern_y as f64],
        [2.0 * (b * d - a * c) * xd, 2.0 * (c * d + a * b) * yd, (a * a + d * d - c * c - b * b) * zd, h.quatern_z as f64],
    ]
}

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
pub fn write_image(path: &Path, reference: &nifti::NiftiHeader, dims: [usize; 3], nvol: usize, data: &[f32]) -> Result<()> {
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
        return Err(err(format!("invalid dimensions {}x{}x{}x{} (each must be 1..={limit})", dims[0], dims[1], dims[2], nvol)));
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

/// Build a NIfTI-1 header (float32, 3D) whose sform is `affine` with code `xform_code`
/// (e.g. 4 = MNI_152, 2 = aligned anat), and whose qform is the same transform when it is
/// a rotation times the voxel sizes (`pixdim`, with a possible flip of the third axis); when
/// the affine has shear or its column lengths disagree with `pixdim`, a qform cannot express
/// it and qform_code is 0. Used to write simulated images in a given space.
pub fn header_from_affine(dims: [usize; 3], pixdim: [f32; 3], affine: [[f64; 4]; 3], xform_code: i16) -> nifti::NiftiHeader {
    let mut h = NiftiHeader {
        dim: [3, dim16(dims[0]), dim16(dims[1]), dim16(dims[2]), 1, 1, 1, 1],
        datatype: 16,
        bitpix: 32,
        pixdim: [1.0, pixdim[0], pixdim[1], pixdim[2], 1.0, 1.0, 1.0, 1.0],
        vox_offset: 352.0,
        scl_slope: 1.0,
        scl_inter: 0.0,
        xyzt_units: 2, // NIFTI_UNITS_MM
        sform_code: xform_code,
        qform_code: 0,
        srow_x: affine[0].map(|v| v as f32),
        srow_y: affine[1].map(|v| v as f32),
        srow_z: affine[2].map(|v| v as f32),
        quatern_x: affine[0][3] as f32,
        quatern_y: affine[1][3] as f32,
        quatern_z: affine[2][3] as f32,
        magic: *b"n+1\0",
        endianness: Endianness::Little,
        ..NiftiHeader::default()
    };
    h.set_description_str("voxflip").expect("short description");
    if let Some((qfac, [b, c, d])) = affine_to_quatern(affine, pixdim) {
        h.qform_code = xform_code;
        h.pixdim[0] = qfac;
        h.quatern_b = b as f32;
        h.quatern_c = c as f32;
        h.quatern_d = d as f32;
    }
    h
}

/// A dimension in the NIfTI-1 field's range (larger ones are refused later by `write_image`).
fn dim16(d: usize) -> u16 {
    d.min(u16::MAX as usize) as u16
}

/// Inverse of `qform_affine` (after nifti1_io's `nifti_mat44_to_quatern`): returns qfac and
/// (b, c, d), or `None` when the 3x3 part is not (rotation) x diag(pixdim) x diag(1,1,±1).
fn affine_to_quatern(m: [[f64; 4]; 3], pixdim: [f32; 3]) -> Option<(f32, [f64; 3])> {
    // Columns of the 3x3 part and their lengths.
    let mut col = [[0.0f64; 3]; 3];
    for (j, cj) in col.iter_mut().enumerate() {
        for i in 0..3 {
            cj[i] = m[i][j];
        }
        let len = cj.iter().map(|v| v * v).sum::<f64>().sqrt();
        let want = pixdim[j] as f64;
        let matches = len > 0.0 && want > 0.0 && (len - want).abs() <= 1e-4 * want.max(1.0);
        if !matches {
            return None;
        }
        cj.iter_mut().for_each(|v| *v /= len);
    }
    let dot = |a: &[f64; 3], b: &[f64; 3]| a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
    if dot(&col[0], &col[1]).abs() > 1e-4 || dot(&col[0], &col[2]).abs() > 1e-4 || dot(&col[1], &col[2]).abs() > 1e-4 {
        return None;
    }
    // r[i][j]: row i, column j of the unit-column matrix.
    let mut r = [[0.0f64; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            r[i][j] = col[j][i];
        }
    }
    let det = r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1]) - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
        + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
    let qfac = if det < 0.0 {
        for row in r.iter_mut() {
            row[2] = -row[2];
        }
        -1.0
    } else {
        1.0
    };
    let (r11, r12, r13) = (r[0][0], r[0][1], r[0][2]);
    let (r21, r22, r23) = (r[1][0], r[1][1], r[1][2]);
    let (r31, r32, r33) = (r[2][0], r[2][1], r[2][2]);
    let (mut a, mut b, mut c, mut d);
    let tr = r11 + r22 + r33 + 1.0;
    if tr > 0.5 {
        a = 0.5 * tr.sqrt();
        b = 0.25 * (r32 - r23) / a;
        c = 0.25 * (r13 - r31) / a;
        d = 0.25 * (r21 - r12) / a;
    } else {
        let xd = 1.0 + r11 - (r22 + r33);
        let yd = 1.0 + r22 - (r11 + r33);
        let zd = 1.0 + r33 - (r11 + r22);
        if xd > 1.0 {
            b = 0.5 * xd.sqrt();
            c = 0.25 * (r12 + r21) / b;
            d = 0.25 * (r13 + r31) / b;
            a = 0.25 * (r32 - r23) / b;
        } else if yd > 1.0 {
            c = 0.5 * yd.sqrt();
            b = 0.25 * (r12 + r21) / c;
            d = 0.25 * (r23 + r32) / c;
            a = 0.25 * (r13 - r31) / c;
        } else {
            d = 0.5 * zd.sqrt();
            b = 0.25 * (r13 + r31) / d;
            c = 0.25 * (r23 + r32) / d;
            a = 0.25 * (r21 - r12) / d;
        }
        if a < 0.0 {
            b = -b;
            c = -c;
            d = -d;
            a = -a;
        }
    }
    let _ = a;
    Some((qfac, [b, c, d]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    /// A rotation about z by `deg` with a flipped x axis, scaled by pixdim, plus an offset.
    fn oblique_affine(pixdim: [f32; 3], deg: f64) -> [[f64; 4]; 3] {
        let (s, c) = deg.to_radians().sin_cos();
        let (px, py, pz) = (pixdim[0] as f64, pixdim[1] as f64, pixdim[2] as f64);
        [[-c * px, -s * py, 0.0, 90.0], [-s * px, c * py, 0.0, -126.0], [0.0, 0.0, pz, -72.0]]
    }

    fn assert_affine_close(a: [[f64; 4]; 3], b: [[f64; 4]; 3], tol: f64) {
        for i in 0..3 {
            for j in 0..4 {
                assert!((a[i][j] - b[i][j]).abs() < tol, "affine differs at [{i}][{j}]: {a:?} vs {b:?}");
            }
        }
    }

    fn assert_one_line_naming(e: &Error, path: &Path, needle: &str) {
        let msg = e.to_string();
        assert!(!msg.contains('\n'), "multi-line message: {msg}");
        assert!(msg.contains(&path.display().to_string()), "message does not name the file: {msg}");
        assert!(msg.contains(needle), "message lacks '{needle}': {msg}");
    }

    #[test]
    fn header_from_affine_qform_matches_sform() {
        let pixdim = [2.0, 2.5, 3.0];
        for deg in [0.0, 30.0, 90.0, 180.0, 250.0] {
            let aff = oblique_affine(pixdim, deg);
            let h = header_from_affine([4, 5, 6], pixdim, aff, 4);
            assert_eq!((h.sform_code, h.qform_code), (4, 4), "deg {deg}");
            assert_affine_close(qform_affine(&h), aff, 1e-4);
        }
        // Shear: no qform.
        let mut sheared = oblique_affine(pixdim, 10.0);
        sheared[0][1] += 0.7;
        let h = header_from_affine([4, 5, 6], pixdim, sheared, 4);
        assert_eq!((h.sform_code, h.qform_code), (4, 0));
    }

    #[test]
    fn write_read_round_trip_4d_and_3d() {
        let dir = tmp();
        let dims = [4, 3, 2];
        let pixdim = [2.0, 2.0, 2.5];
        let aff = oblique_affine(pixdim, 30.0);
        let h = header_from_affine(dims, pixdim, aff, 4);
        let data: Vec<f32> = (0..4 * 3 * 2 * 3).map(|i| i as f32 * 0.5 - 3.0).collect();
        let p4 = dir.path().join("four.nii.gz");
        write_image(&p4, &h, dims, 3, &data).unwrap();
        let img = read_image(&p4).unwrap();
        assert_eq!((img.dims, img.nvol), (dims, 3));
        assert_eq!(img.data, data);
        assert_eq!(img.pixdim, pixdim);
        assert_affine_close(img.affine, aff, 1e-4);
        assert_eq!((img.header.sform_code, img.header.qform_code), (4, 4));
        assert_affine_close(qform_affine(&img.header), aff, 1e-4);
        assert_eq!(img.volume(2), &data[48..72]);

        // A 3D map written with the read header as reference keeps sform, qform, units.
        let p3 = dir.path().join("map.nii");
        write_map(&p3, &img.header, dims, img.volume(1)).unwrap();
        let map = read_image(&p3).unwrap();
        assert_eq!((map.dims, map.nvol, map.header.dim[0]), (dims, 1, 3));
        assert_eq!(map.data, img.volume(1));
        for f in [|h: &NiftiHeader| h.srow_x, |h: &NiftiHeader| h.srow_y, |h: &NiftiHeader| h.srow_z] {
            assert_eq!(f(&map.header), f(&img.header));
        }
        let q = |h: &NiftiHeader| (h.qform_code, h.sform_code, h.quatern_b, h.quatern_c, h.quatern_d, h.quatern_x, h.quatern_y, h.quatern_z, h.pixdim[0]);
        assert_eq!(q(&map.header), q(&img.header));
        assert_eq!(map.header.xyzt_units, img.header.xyzt_units);
        assert_eq!((map.header.scl_slope, map.header.scl_inter, map.header.datatype), (1.0, 0.0, 16));
        assert!(map.header.descrip.starts_with(b"voxflip\0"));
        // Exactly the requested path, nothing else.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn write_rejects_bad_arguments() {
        let dir = tmp();
        let h = header_from_affine([2, 2, 2], [1.0; 3], oblique_affine([1.0; 3], 0.0), 4);
        assert!(write_map(&dir.path().join("x.nii.gz"), &h, [2, 2, 2], &[0.0; 7]).is_err());
        assert!(write_map(&dir.path().join("x.img"), &h, [2, 2, 2], &[0.0; 8]).is_err());
        let e = write_map(&dir.path().join("no/such/dir/x.nii.gz"), &h, [2, 2, 2], &[0.0; 8]).unwrap_err();
        assert!(!e.to_string().contains('\n'));
    }

    /// Write an int16 .nii with the nifti crate, then patch scl_slope/scl_inter in place.
    fn int16_file(dir: &Path, slope: f32, inter: f32) -> (PathBuf, Vec<i16>) {
        let vals: Vec<i16> = vec![-3, 0, 1, 2, 100, -32768, 32767, 7];
        let arr = ndarray::Array::from_shape_vec((2, 2, 2), vals.clone()).unwrap();
        let p = dir.join("int16.nii");
        let h = header_from_affine([2, 2, 2], [1.0; 3], oblique_affine([1.0; 3], 0.0), 2);
        nifti::writer::WriterOptions::new(&p).reference_header(&h).write_nifti(&arr).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[112..116].copy_from_slice(&slope.to_le_bytes());
        bytes[116..120].copy_from_slice(&inter.to_le_bytes());
        std::fs::write(&p, bytes).unwrap();
        // Standard C order in ndarray -> NIfTI x-fastest order is the transpose.
        let t: Vec<i16> = arr.t().iter().copied().collect();
        (p, t)
    }

    #[test]
    fn int16_with_slope_and_intercept_is_scaled() {
        let dir = tmp();
        let (p, raw) = int16_file(dir.path(), 2.0, 1.0);
        let img = read_image(&p).unwrap();
        let want: Vec<f32> = raw.iter().map(|&v| v as f32 * 2.0 + 1.0).collect();
        assert_eq!(img.data, want);
        // Slope 0 means no scaling, as the standard says.
        let (p, raw) = int16_file(dir.path(), 0.0, 5.0);
        let img = read_image(&p).unwrap();
        assert_eq!(img.data, raw.iter().map(|&v| v as f32).collect::<Vec<_>>());
    }

    #[test]
    fn every_supported_nifti1_datatype_in_both_byte_orders() {
        let dir = tmp();
        let vals = [0.0f64, 1.0, 2.0, 3.0, 4.0, 5.0, 126.0, 127.0];
        for endianness in [Endianness::Little, Endianness::Big] {
            let mut h = header_from_affine([2, 2, 2], [1.0; 3], oblique_affine([1.0; 3], 0.0), 2);
            h.endianness = endianness;
            macro_rules! check {
                ($t:ty) => {{
                    let arr = ndarray::Array::from_shape_vec((2, 2, 2), vals.iter().map(|&v| v as $t).collect()).unwrap();
                    let p = dir.path().join(format!("{}_{:?}.nii", stringify!($t), endianness));
                    nifti::writer::WriterOptions::new(&p).reference_header(&h).write_nifti(&arr).unwrap();
                    let img = read_image(&p).unwrap();
                    let want: Vec<f32> = arr.t().iter().map(|&v| v as f32).collect();
                    assert_eq!(img.data, want, "{} {:?}", stringify!($t), endianness);
                }};
            }
            check!(u8);
            check!(i8);
            check!(i16);
            check!(u16);
            check!(i32);
            check!(u32);
            check!(i64);
            check!(u64);
            check!(f32);
            check!(f64);
        }
    }

    /// A hand-written NIfTI-2 file: float64 data, sform and qform, in either byte order.
    fn nifti2_bytes(dim: [i64; 8], datatype: i16, data: &[u8], big: bool) -> Vec<u8> {
        let mut h = vec![0u8; 544];
        macro_rules! put {
            ($off:expr, $v:expr) => {{
                let b = if big { $v.to_be_bytes() } else { $v.to_le_bytes() };
                h[$off..$off + b.len()].copy_from_slice(&b);
            }};
        }
        put!(0, 540i32);
        h[4..12].copy_from_slice(b"n+2\0\r\n\x1a\n");
        put!(12, datatype);
        put!(14, 64i16);
        for (i, d) in dim.iter().enumerate() {
            put!(16 + 8 * i, *d);
        }
        let pixdim = [-1.0f64, 2.0, 3.0, 4.0, 1.5, 1.0, 1.0, 1.0];
        for (i, p) in pixdim.iter().enumerate() {
            put!(104 + 8 * i, *p);
        }
        put!(168, 544i64);
        put!(176, 1.0f64);
        put!(184, 0.0f64);
        h[240..247].copy_from_slice(b"nifti-2");
        put!(344, 1i32); // qform_code
        put!(348, 4i32); // sform_code
        put!(352, 0.0f64);
        put!(360, 0.0f64);
        put!(368, 1.0f64); // 180 degrees about z
        put!(376, 10.0f64);
        put!(384, 20.0f64);
        put!(392, 30.0f64);
        let srow = [[2.0f64, 0.0, 0.0, -10.0], [0.0, 3.0, 0.0, -20.0], [0.0, 0.0, 4.0, -30.0]];
        for (r, row) in srow.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                put!(400 + 32 * r + 8 * c, *v);
            }
        }
        put!(500, 10i32); // mm + s
        h.extend_from_slice(data);
        h
    }

    #[test]
    fn nifti2_is_read_in_both_byte_orders() {
        let dir = tmp();
        let vals: Vec<f64> = (0..2 * 3 * 4 * 2).map(|i| i as f64 * 1.25 - 7.0).collect();
        for big in [false, true] {
            let data: Vec<u8> = vals.iter().flat_map(|v| if big { v.to_be_bytes() } else { v.to_le_bytes() }).collect();
            let p = dir.path().join(format!("n2_{big}.nii"));
            std::fs::write(&p, nifti2_bytes([4, 2, 3, 4, 2, 1, 1, 1], 64, &data, big)).unwrap();
            let img = read_image(&p).unwrap();
            assert_eq!((img.dims, img.nvol), ([2, 3, 4], 2));
            assert_eq!(img.data, vals.iter().map(|&v| v as f32).collect::<Vec<_>>());
            assert_eq!(img.pixdim, [2.0, 3.0, 4.0]);
            assert_affine_close(img.affine, [[2.0, 0.0, 0.0, -10.0], [0.0, 3.0, 0.0, -20.0], [0.0, 0.0, 4.0, -30.0]], 1e-9);
            assert_eq!((img.header.qform_code, img.header.sform_code, img.header.xyzt_units), (1, 4, 10));
            assert_eq!(img.header.dim, [4, 2, 3, 4, 2, 1, 1, 1]);
            // qfac -1, 180 degrees about z: diag(-2, -3, -4) with the quatern offsets.
            assert_affine_close(qform_affine(&img.header), [[-2.0, 0.0, 0.0, 10.0], [0.0, -3.0, 0.0, 20.0], [0.0, 0.0, -4.0, 30.0]], 1e-9);
            // The converted header is usable as an output reference.
            let out = dir.path().join(format!("out_{big}.nii.gz"));
            write_map(&out, &img.header, img.dims, img.volume(0)).unwrap();
            let back = read_image(&out).unwrap();
            assert_eq!(back.data, img.volume(0));
            assert_affine_close(back.affine, img.affine, 1e-9);
        }
    }

    #[test]
    fn gzipped_nifti2_and_trailing_unit_dims() {
        use std::io::Write;
        let dir = tmp();
        // dim[0] = 5 with dim[5] = 1 is really 4D.
        let data: Vec<u8> = (0..8u8).collect();
        let bytes = nifti2_bytes([5, 2, 2, 1, 2, 1, 1, 1], 2, &data, false);
        let p = dir.path().join("n2.nii.gz");
        let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&p).unwrap(), flate2::Compression::fast());
        enc.write_all(&bytes).unwrap();
        enc.finish().unwrap();
        let img = read_image(&p).unwrap();
        assert_eq!((img.dims, img.nvol), ([2, 2, 1], 2));
        assert_eq!(img.data, (0..8).map(|v| v as f32).collect::<Vec<_>>());
    }

    #[test]
    fn bad_inputs_are_one_line_errors_naming_the_file() {
        let dir = tmp();
        let d = dir.path();
        let h = header_from_affine([4, 4, 4], [1.0; 3], oblique_affine([1.0; 3], 0.0), 4);

        // Missing.
        let p = d.join("missing.nii.gz");
        assert_one_line_naming(&read_image(&p).unwrap_err(), &p, "no such file");

        // Truncated gzip.
        let p = d.join("trunc.nii.gz");
        write_map(&p, &h, [4, 4, 4], &(0..64).map(|v| v as f32).collect::<Vec<_>>()).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        assert_one_line_naming(&read_image(&p).unwrap_err(), &p, "gzip");

        // Uncompressed but data cut short.
        let p = d.join("short.nii");
        write_map(&p, &h, [4, 4, 4], &[1.0; 64]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
        assert_one_line_naming(&read_image(&p).unwrap_err(), &p, "data shorter than the header says");

        // Header cut short.
        std::fs::write(&p, &bytes[..200]).unwrap();
        assert_one_line_naming(&read_image(&p).unwrap_err(), &p, "truncated NIfTI-1 header");

        // Not NIfTI at all.
        let p = d.join("notes.nii");
        std::fs::write(&p, "this is a text file, not an image\n".repeat(20)).unwrap();
        assert_one_line_naming(&read_image(&p).unwrap_err(), &p, "not a NIfTI file");
        let p = d.join("empty.nii");
        std::fs::write(&p, b"").unwrap();
        assert_one_line_naming(&read_image(&p).unwrap_err(), &p, "not a NIfTI file");

        // Right size, wrong magic.
        let p = d.join("magic.nii");
        let mut b = bytes.clone();
        b[344..348].copy_from_slice(b"xyz\0");
        std::fs::write(&p, &b).unwrap();
        assert_one_line_naming(&read_image(&p).unwrap_err(), &p, "bad magic");

        // 5D.
        let p = d.join("five.nii");
        std::fs::write(&p, nifti2_bytes([5, 2, 2, 2, 1, 3, 1, 1], 2, &[0u8; 24], false)).unwrap();
        assert_one_line_naming(&read_image(&p).unwrap_err(), &p, "5D images are not supported (dim = ");

        // Zero-sized.
        let p = d.join("zero.nii");
        std::fs::write(&p, nifti2_bytes([3, 2, 0, 2, 1, 1, 1, 1], 2, &[], false)).unwrap();
        assert_one_line_naming(&read_image(&p).unwrap_err(), &p, "zero-sized");

        // Unsupported datatype (complex64).
        let p = d.join("complex.nii");
        std::fs::write(&p, nifti2_bytes([3, 2, 2, 2, 1, 1, 1, 1], 32, &[0u8; 64], false)).unwrap();
        assert_one_line_naming(&read_image(&p).unwrap_err(), &p, "unsupported datatype complex64");

        // NIfTI-1 5D and corrupt dim[0] via patched bytes.
        let p = d.join("five1.nii");
        let mut b = bytes.clone();
        b[40..42].copy_from_slice(&5i16.to_le_bytes());
        b[48..50].copy_from_slice(&1i16.to_le_bytes());
        b[50..52].copy_from_slice(&2i16.to_le_bytes());
        std::fs::write(&p, &b).unwrap();
        assert_one_line_naming(&read_image(&p).unwrap_err(), &p, "5D images are not supported");
        b[40..42].copy_from_slice(&0x3000i16.to_le_bytes());
        std::fs::write(&p, &b).unwrap();
        assert_one_line_naming(&read_image(&p).unwrap_err(), &p, "dim[0]");
    }

    #[test]
    fn qform_only_and_no_transform() {
        let dir = tmp();
        let p = dir.path().join("q.nii");
        let aff = oblique_affine([2.0, 2.0, 2.0], 45.0);
        let mut h = header_from_affine([2, 2, 2], [2.0; 3], aff, 1);
        h.sform_code = 0;
        write_map(&p, &h, [2, 2, 2], &[0.0; 8]).unwrap();
        assert_affine_close(read_image(&p).unwrap().affine, aff, 1e-4);
        h.qform_code = 0;
        write_map(&p, &h, [2, 2, 2], &[0.0; 8]).unwrap();
        assert_affine_close(read_image(&p).unwrap().affine, [[2.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]], 1e-9);
    }
}
