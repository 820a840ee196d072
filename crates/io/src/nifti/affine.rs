//! Voxel-to-world transforms: the affine of a header (sform, else qform, else pixdim) and a
//! header for a given affine (sform and, where a rotation can express it, qform).
use nifti::{Endianness, NiftiHeader};

/// Voxel -> world affine: sform if sform_code > 0, else qform if qform_code > 0, else
/// diag(pixdim) (NIfTI-1 "method 1").
pub(super) fn affine_of(h: &NiftiHeader) -> [[f64; 4]; 3] {
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
pub(super) fn qform_affine(h: &NiftiHeader) -> [[f64; 4]; 3] {
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
        [
            (a * a + b * b - c * c - d * d) * xd,
            2.0 * (b * c - a * d) * yd,
            2.0 * (b * d + a * c) * zd,
            h.quatern_x as f64,
        ],
        [
            2.0 * (b * c + a * d) * xd,
            (a * a + c * c - b * b - d * d) * yd,
            2.0 * (c * d - a * b) * zd,
            h.quatern_y as f64,
        ],
        [
            2.0 * (b * d - a * c) * xd,
            2.0 * (c * d + a * b) * yd,
            (a * a + d * d - c * c - b * b) * zd,
            h.quatern_z as f64,
        ],
    ]
}

/// Build a NIfTI-1 header (float32, 3D) whose sform is `affine` with code `xform_code`
/// (e.g. 4 = MNI_152, 2 = aligned anat), and whose qform is the same transform when it is
/// a rotation times the voxel sizes (`pixdim`, with a possible flip of the third axis); when
/// the affine has shear or its column lengths disagree with `pixdim`, a qform cannot express
/// it and qform_code is 0. Used to write simulated images in a given space.
pub fn header_from_affine(
    dims: [usize; 3],
    pixdim: [f32; 3],
    affine: [[f64; 4]; 3],
    xform_code: i16,
) -> nifti::NiftiHeader {
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
