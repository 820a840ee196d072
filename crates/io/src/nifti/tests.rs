//! Round trips and bad-input messages of the NIfTI reader and writer.
use super::affine::qform_affine;
use super::*;
use crate::error::Error;
use nifti::{Endianness, NiftiHeader};
use std::path::{Path, PathBuf};

fn tmp() -> voxflip_testkit::TempDir {
    voxflip_testkit::tempdir().unwrap()
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
    let q = |h: &NiftiHeader| {
        (
            h.qform_code,
            h.sform_code,
            h.quatern_b,
            h.quatern_c,
            h.quatern_d,
            h.quatern_x,
            h.quatern_y,
            h.quatern_z,
            h.pixdim[0],
        )
    };
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
        assert_affine_close(
            qform_affine(&img.header),
            [[-2.0, 0.0, 0.0, 10.0], [0.0, -3.0, 0.0, 20.0], [0.0, 0.0, -4.0, 30.0]],
            1e-9,
        );
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
    assert_affine_close(
        read_image(&p).unwrap().affine,
        [[2.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]],
        1e-9,
    );
}

/// A 4D image of several gzip chunks: the file is the same bytes whichever number of
/// threads compressed it, a plain gzip decoder (miniz_oxide, not the writer's zlib-rs) finds
/// the .nii bytes in it, and it reads back exactly.
#[test]
fn gzipped_image_bytes_do_not_depend_on_threads() {
    let dir = tmp();
    let dims = [40, 30, 20];
    let h = header_from_affine(dims, [2.0; 3], oblique_affine([2.0; 3], 10.0), 4);
    let data: Vec<f32> = (0..40 * 30 * 20 * 40).map(|i| ((i * 7919) % 1000) as f32 * 0.01 - 5.0).collect();
    let write = |threads: usize, name: &str| {
        let p = dir.path().join(name);
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| write_image(&p, &h, dims, 40, &data))
            .unwrap();
        std::fs::read(p).unwrap()
    };
    let one = write(1, "one.nii.gz");
    assert!(4 * data.len() > 2 * crate::gzip::chunk_size(4 * data.len()), "the test needs several chunks");
    for threads in [2, 4] {
        assert!(write(threads, &format!("t{threads}.nii.gz")) == one, "{threads} threads");
    }
    let plain = dir.path().join("plain.nii");
    write_image(&plain, &h, dims, 40, &data).unwrap();
    let xlen = u16::from_le_bytes([one[10], one[11]]) as usize;
    let inflated = miniz_oxide::inflate::decompress_to_vec(&one[12 + xlen..one.len() - 8]).unwrap();
    assert!(inflated == std::fs::read(&plain).unwrap());
    assert_eq!(read_image(&dir.path().join("one.nii.gz")).unwrap().data, data);
    assert_eq!(read_image(&plain).unwrap().data, data);
}

/// An image larger than the reader's conversion block, in 8-byte big-endian values with
/// scaling, from a plain gzip stream (another tool's, read block by block), an uncompressed
/// file, and the same stream cut short: each value as the standard says, or the error.
#[test]
fn large_streams_convert_block_by_block() {
    use std::io::Write;
    let dir = tmp();
    let (nx, ny, nz, nt) = (50i64, 40, 30, 24);
    let n = (nx * ny * nz * nt) as usize;
    assert!(8 * n > 2 * super::read::BLOCK_BYTES, "the test needs several blocks");
    let values: Vec<f64> = (0..n).map(|i| (i % 9973) as f64 * 0.125 - 600.0).collect();
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
    let mut bytes = nifti2_bytes([4, nx, ny, nz, nt, 1, 1, 1], 64, &raw, true);
    // scl_slope 2, scl_inter -1 (big-endian f64 at 176 and 184).
    bytes[176..184].copy_from_slice(&2.0f64.to_be_bytes());
    bytes[184..192].copy_from_slice(&(-1.0f64).to_be_bytes());
    let want: Vec<f32> = values.iter().map(|v| (v * 2.0 - 1.0) as f32).collect();

    let gz = dir.path().join("big.nii.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&bytes).unwrap();
    let stream = enc.finish().unwrap();
    std::fs::write(&gz, &stream).unwrap();
    assert_eq!(crate::gzip::decompress_indexed(&stream).unwrap(), None, "a stream without voxflip's index");
    let img = read_image(&gz).unwrap();
    assert_eq!((img.dims, img.nvol), ([50, 40, 30], 24));
    assert!(img.data == want);

    let plain = dir.path().join("big.nii");
    std::fs::write(&plain, &bytes).unwrap();
    assert!(read_image(&plain).unwrap().data == want);

    // Cut within the data: the stream's own error; a cut file's data: how much there was.
    std::fs::write(&gz, &stream[..stream.len() * 2 / 3]).unwrap();
    assert_one_line_naming(&read_image(&gz).unwrap_err(), &gz, "corrupt or truncated gzip data");
    std::fs::write(&plain, &bytes[..bytes.len() - 3]).unwrap();
    let e = read_image(&plain).unwrap_err();
    assert_one_line_naming(&e, &plain, &format!("found {}", 8 * n - 3));
}

/// A header a fuzzer garbled is refused in one line naming the file and the field; the
/// conventions real writers use for "no scaling" still read, unscaled. Each case patches one
/// field of a good NIfTI-1 file at its offset in the standard's layout.
#[test]
fn garbled_header_fields_are_refused_naming_the_field() {
    let dir = tmp();
    let h = header_from_affine([2, 2, 2], [2.0; 3], oblique_affine([2.0; 3], 0.3), 4);
    let good = dir.path().join("good.nii");
    let values: Vec<f32> = (0..8).map(|v| v as f32 - 3.0).collect();
    write_map(&good, &h, [2, 2, 2], &values).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let patched = |name: &str, at: usize, field: &[u8]| {
        let p = dir.path().join(name);
        let mut b = bytes.clone();
        b[at..at + field.len()].copy_from_slice(field);
        std::fs::write(&p, b).unwrap();
        p
    };
    let f = |v: f32| v.to_le_bytes();
    let i = |v: i16| v.to_le_bytes();
    let refused: Vec<(&str, usize, Vec<u8>, &str)> = vec![
        ("slope_inf.nii", 112, f(f32::INFINITY).to_vec(), "scl_slope"),
        ("slope_nan_inter_2.nii", 112, [f(f32::NAN), f(2.0)].concat(), "scl_slope"),
        ("slope_subnormal.nii", 112, f(1e-40).to_vec(), "scl_slope"),
        ("inter_inf.nii", 116, f(f32::NEG_INFINITY).to_vec(), "scl_inter"),
        ("inter_nan.nii", 116, f(f32::NAN).to_vec(), "scl_inter"),
        ("qform_code.nii", 252, i(7).to_vec(), "qform_code"),
        ("sform_code.nii", 254, i(-1).to_vec(), "sform_code"),
        ("pixdim.nii", 84, f(f32::NAN).to_vec(), "pixdim[2]"),
        ("vox_offset_nan.nii", 108, f(f32::NAN).to_vec(), "vox_offset"),
        ("vox_offset_neg.nii", 108, f(-352.0).to_vec(), "vox_offset"),
        ("vox_offset_frac.nii", 108, f(352.5).to_vec(), "vox_offset"),
        ("srow.nii", 284, f(f32::INFINITY).to_vec(), "srow"),
        ("datatype.nii", 70, i(99).to_vec(), "datatype"),
        ("dims.nii", 40, i(9).to_vec(), "dim[0]"),
        ("dim_neg.nii", 44, i(-2).to_vec(), "dimension"),
    ];
    for (name, at, field, what) in refused {
        let p = patched(name, at, &field);
        let e = read_image(&p).unwrap_err();
        assert_one_line_naming(&e, &p, what);
    }
    // Still read, unscaled: slope 0 (the standard's "no scaling", any intercept) and NaN
    // in both factors (nibabel's unscaled files; niftilib reads non-finite factors as 0).
    for (name, field) in
        [("slope0.nii", [f(0.0), f(5.0)].concat()), ("nan_nan.nii", [f(f32::NAN), f(f32::NAN)].concat())]
    {
        let img = read_image(&patched(name, 112, &field)).unwrap();
        assert_eq!(img.data, values, "{name}");
    }
    // A real scaling still applies: slope 2, intercept 1.
    let img = read_image(&patched("scaled.nii", 112, &[f(2.0), f(1.0)].concat())).unwrap();
    assert_eq!(img.data, values.iter().map(|v| v * 2.0 + 1.0).collect::<Vec<_>>());
}
