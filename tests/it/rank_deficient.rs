//! Rank-deficient designs (randomise and PALM fit them through the pseudo-inverse): a design
//! with a redundant column and estimable contrasts gives the maps of the reduced design
//! (the column dropped, its weights dropped) bit for bit on each engine, and the t and F of
//! an explicit f64 pseudo-inverse fit written here; the warning names the redundant column;
//! a contrast that is not estimable is refused in one line naming it and design.con, with
//! nothing written.
use crate::common::gpu_usable;
use nalgebra::{DMatrix, DVector};
use std::path::Path;
use voxflip_io::{header_from_affine, write_image};

const DIMS: [usize; 3] = [4, 3, 2];
const N: usize = 8;
const AGE: [f64; N] = [31.0, 45.0, 28.0, 52.0, 39.0, 60.0, 24.0, 41.0];
const GROUP: [f64; N] = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
const WARNING: &str = "design.mat: column 3 is a linear combination of columns 1, 2 (rank 3 of 4 columns); \
                       contrasts are fitted through the pseudo-inverse";

fn nvox() -> usize {
    DIMS.iter().product()
}

/// Hash noise in [-0.5, 0.5).
fn noise(k: usize) -> f64 {
    let h = (k as u32).wrapping_mul(2654435761).wrapping_add(977).wrapping_mul(2246822519);
    ((h >> 8) % 10007) as f64 / 10007.0 - 0.5
}

fn vest(path: &Path, header: &str, rows: &[Vec<f64>]) {
    let body: String =
        rows.iter().map(|r| r.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" ") + "\n").collect();
    std::fs::write(path, format!("{header}\n/Matrix\n{body}")).unwrap();
}

/// The data (a group effect in half the voxels, an age effect in all) and the design
/// [g_A, g_B, 1, age]: column 3 = column 1 + column 2. Returns (M, Y).
fn inputs(dir: &Path) -> (DMatrix<f64>, DMatrix<f64>) {
    let v = nvox();
    let m = DMatrix::from_fn(N, 4, |i, k| [1.0 - GROUP[i], GROUP[i], 1.0, AGE[i]][k]);
    let y = DMatrix::from_fn(N, v, |i, x| {
        let effect = if x % 2 == 0 { 0.8 * GROUP[i] } else { 0.0 };
        effect + 0.02 * AGE[i] + noise(i * v + x)
    });
    let vols: Vec<f32> = (0..N * v).map(|k| y[(k / v, k % v)] as f32).collect();
    let affine = [[2.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]];
    let h = header_from_affine(DIMS, [2.0; 3], affine, 4);
    write_image(&dir.join("in.nii.gz"), &h, DIMS, N, &vols).unwrap();
    write_image(&dir.join("mask.nii.gz"), &h, DIMS, 1, &vec![1.0; v]).unwrap();
    let rows =
        |keep: &[usize]| -> Vec<Vec<f64>> { (0..N).map(|i| keep.iter().map(|&k| m[(i, k)]).collect()).collect() };
    vest(&dir.join("design.mat"), &format!("/NumWaves 4\n/NumPoints {N}"), &rows(&[0, 1, 2, 3]));
    vest(&dir.join("reduced.mat"), &format!("/NumWaves 3\n/NumPoints {N}"), &rows(&[0, 1, 3]));
    // A - B, age, and A's mean at the mean age's zero ([1 0 1 0] = g_A + intercept: column
    // 3's weight follows column 1 + column 2). The reduced contrasts drop column 3's weight.
    let cons = [[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0]];
    vest(&dir.join("design.con"), "/NumWaves 4\n/NumContrasts 3", &cons.map(|c| c.to_vec()));
    vest(&dir.join("reduced.con"), "/NumWaves 3\n/NumContrasts 3", &cons.map(|c| vec![c[0], c[1], c[3]]));
    vest(&dir.join("design.fts"), "/NumWaves 3\n/NumContrasts 1", &[vec![1.0, 1.0, 0.0]]);
    (m, y)
}

fn run(dir: &Path, mat: &str, con: &str, prefix: &str, backend: &str) -> String {
    let args = [
        "-i",
        "in.nii.gz",
        "-m",
        "mask.nii.gz",
        "-d",
        mat,
        "-t",
        con,
        "-f",
        "design.fts",
        "-o",
        prefix,
        "-n",
        "300",
        "-x",
        "--uncorrp",
        "-F",
        "1.5",
        "--seed",
        "7",
        "--backend",
        backend,
        "--no-report",
    ];
    let out = crate::common::voxflip(dir, &args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?}: {err}");
    err
}

fn map(path: &Path) -> Vec<f32> {
    voxflip_io::read_image(path).unwrap().data
}

/// The f64 fit randomise makes (calculateTstat / calculateFStat through pinv): per voxel
/// t = c b / sqrt(c pinv(M) pinv(M)' c' s2), F = (C b)' (C pinv(M'M) C')^-1 (C b) / rank(C) / s2,
/// b = pinv(M) y, s2 = RSS / (N - rank M).
fn pinv_fit(m: &DMatrix<f64>, y: &DMatrix<f64>, c: &DMatrix<f64>) -> Vec<f64> {
    let pinv = m.clone().pseudo_inverse(1e-10).unwrap();
    let b = &pinv * y;
    let dof = (N - 3) as f64;
    let cov = c.transpose() * &pinv * pinv.transpose() * c;
    (0..y.ncols())
        .map(|x| {
            let s2 = (y.column(x) - m * b.column(x)).norm_squared() / dof;
            let cb = c.transpose() * b.column(x);
            if c.ncols() == 1 {
                cb[0] / (cov[(0, 0)] * s2).sqrt()
            } else {
                (cb.transpose() * cov.clone().try_inverse().unwrap() * &cb)[(0, 0)] / c.ncols() as f64 / s2
            }
        })
        .collect()
}

#[test]
fn estimable_contrasts_give_the_reduced_designs_maps() {
    let dir = voxflip_testkit::tempdir().unwrap();
    let d = dir.path();
    let (m, y) = inputs(d);
    let mut backends = vec!["cpu"];
    if gpu_usable("rank-deficient design on the GPU engine") {
        backends.push("gpu");
    }
    let c = |w: &[f64]| DMatrix::from_column_slice(4, w.len() / 4, w);
    let oracles = [
        ("tstat1", pinv_fit(&m, &y, &c(&[1., -1., 0., 0.]))),
        ("tstat2", pinv_fit(&m, &y, &c(&[0., 0., 0., 1.]))),
        ("tstat3", pinv_fit(&m, &y, &c(&[1., 0., 1., 0.]))),
        ("fstat1", pinv_fit(&m, &y, &c(&[1., -1., 0., 0., 0., 0., 0., 1.]))),
    ];
    for backend in backends {
        let err = run(d, "design.mat", "design.con", &format!("full_{backend}"), backend);
        assert_eq!(err.matches(WARNING).count(), 1, "{backend}: the warning once: {err}");
        let err = run(d, "reduced.mat", "reduced.con", &format!("reduced_{backend}"), backend);
        assert!(!err.contains("pseudo-inverse"), "{backend}: no warning for a full-rank design: {err}");
        for (stat, oracle) in &oracles {
            for what in ["", "vox_p_", "vox_corrp_"] {
                let read = |p: &str| map(&d.join(format!("{p}_{backend}_{what}{stat}.nii.gz")));
                // The same partition bit for bit (ContrastModel::new's reduced fit), so the
                // same maps and p-values, not merely close ones.
                assert_eq!(read("full"), read("reduced"), "{backend} {what}{stat}");
            }
            let got = map(&d.join(format!("full_{backend}_{stat}.nii.gz")));
            for x in 0..nvox() {
                // f32 data, basis and arithmetic against the f64 fit: 1e-4 relative.
                assert!(
                    (got[x] as f64 - oracle[x]).abs() < 1e-4 * oracle[x].abs().max(1.0),
                    "{backend} {stat} voxel {x}: {} vs {}",
                    got[x],
                    oracle[x]
                );
            }
        }
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join(format!("full_{backend}_voxflip.json"))).unwrap())
                .unwrap();
        assert_eq!(json["design"]["rank"], 3, "{backend}");
        assert_eq!(
            json["design"]["redundant_columns"],
            serde_json::json!([{"column": "EV3", "combination_of": ["EV1", "EV2"]}]),
            "{backend}"
        );
    }
    // --quiet silences the warning.
    let quiet = ["-i", "in.nii.gz", "-m", "mask.nii.gz", "-d", "design.mat", "-t", "design.con", "-o", "q", "-n", "20"];
    let out = crate::common::voxflip(d, &[&quiet[..], &["--quiet", "--no-report"]].concat());
    assert!(out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("pseudo-inverse"));
}

#[test]
fn non_estimable_contrast_is_refused_in_one_line() {
    let dir = voxflip_testkit::tempdir().unwrap();
    let d = dir.path();
    let (m, _) = inputs(d);
    // Contrast 2 is g_A alone: its weights [1 0 0 0] do not follow column 3 = 1 + 2.
    vest(&d.join("bad.con"), "/NumWaves 4\n/NumContrasts 2", &[vec![1.0, -1.0, 0.0, 0.0], vec![1.0, 0.0, 0.0, 0.0]]);
    let files = || {
        let mut f: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
        f.sort();
        f
    };
    let before = files();
    let args = ["-i", "in.nii.gz", "-m", "mask.nii.gz", "-d", "design.mat", "-t", "bad.con", "-o", "bad", "-n", "20"];
    let out = crate::common::voxflip(d, &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(
        lines[0].contains("bad.con: contrast 2 (C2, [1 0 0 0]) is not estimable")
            && lines[0].contains("design.mat column 3 is a linear combination of columns 1, 2"),
        "{err}"
    );
    assert_eq!(before, files(), "nothing written");
    // The oracle of the refusal: [1 0 0 0] is off the row space of M.
    let p = m.clone().pseudo_inverse(1e-10).unwrap() * &m;
    let c = DVector::from_column_slice(&[1.0, 0.0, 0.0, 0.0]);
    assert!((&c - &p * &c).norm() > 0.1);
}
