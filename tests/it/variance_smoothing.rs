//! randomise's `-v` (variance smoothing, the pseudo-t) against an oracle written here in
//! f64: per sign flip, the Freedman–Lane refit's residual variance sigma^2 = RSS / dof,
//! smoothed by a direct (not separable) 3-D sum of randomise's Gaussian kernel over the
//! mask, normalised by the same sum of the mask, and t = cope / sqrt(c'(M'M)^-1 c *
//! smoothed sigma^2). The grid has anisotropic voxels (2 x 3 x 1.5 mm, so the kernel has
//! another width on each axis, wider than the grid on two) and a ragged mask with holes
//! that touches every face. The test is exhaustive (all 2^6 sign flips), so the null, the
//! uncorrected and FWE p-values and the cluster maps follow from the oracle's maps by
//! counting and flood fill; F-tests are not smoothed (randomise smooths t only). The GPU
//! pipeline gives the CPU pipeline's answers.
use crate::common::{gpu_usable, Tolerance};
use nalgebra::{DMatrix, DVector};
use std::path::Path;
use voxflip_io::{header_from_affine, write_image};
use voxflip_stats::spatial::{tfce_stepwise_reference, Connectivity, MaskGraph, TfceParams, Workspace};

const DIMS: [usize; 3] = [5, 4, 3];
const PIXDIM: [f64; 3] = [2.0, 3.0, 1.5];
const SIGMA_MM: f64 = 3.0;
const N: usize = 6;
const AGE: [f64; N] = [31.0, 45.0, 28.0, 52.0, 39.0, 60.0];
const CLUSTER_THR: f32 = 1.0;

fn nvox() -> usize {
    DIMS.iter().product()
}

fn xyz(l: usize) -> [usize; 3] {
    [l % DIMS[0], (l / DIMS[0]) % DIMS[1], l / (DIMS[0] * DIMS[1])]
}

/// The mask: every voxel but a scattering of holes (interior and on faces).
fn in_mask(l: usize) -> bool {
    let [x, y, z] = xyz(l);
    (x + 2 * y + 3 * z) % 5 != 2
}

fn noise(k: usize, seed: u32) -> f64 {
    let h = (k as u32).wrapping_mul(2654435761).wrapping_add(seed.wrapping_mul(40503)).wrapping_mul(2246822519);
    ((h >> 8) % 10007) as f64 / 10007.0 - 0.5
}

fn write(path: &Path, nvol: usize, data: &[f32]) {
    let p = PIXDIM.map(|p| p as f32);
    let affine = [[PIXDIM[0], 0.0, 0.0, 0.0], [0.0, PIXDIM[1], 0.0, 0.0], [0.0, 0.0, PIXDIM[2], 0.0]];
    let h = header_from_affine(DIMS, p, affine, 4);
    write_image(path, &h, DIMS, nvol, data).unwrap();
}

fn map(path: &Path) -> Vec<f32> {
    voxflip_io::read_image(path).unwrap().data
}

fn text_numbers(path: &Path) -> Vec<f32> {
    std::fs::read_to_string(path).unwrap().split_whitespace().map(|s| s.parse().unwrap()).collect()
}

/// Inputs: a mean effect (large where x < 2) and an age effect, noise whose size varies along x (so that
/// smoothing the variance changes t), the design [1, age], the t contrast [1 0] and the
/// F-test of it. Returns the design and the data (N x all grid voxels).
fn inputs(d: &Path) -> (DMatrix<f64>, DMatrix<f64>) {
    let v = nvox();
    let m = DMatrix::from_fn(N, 2, |i, k| [1.0, AGE[i]][k]);
    let y = DMatrix::from_fn(N, v, |i, l| {
        let [x, ..] = xyz(l);
        let effect = if x < 2 { 1.0 } else { 0.1 };
        effect + 0.01 * AGE[i] + (0.3 + 0.5 * x as f64) * noise(i * v + l, 5)
    });
    let vols: Vec<f32> = (0..N).flat_map(|i| (0..v).map(move |l| (i, l))).map(|(i, l)| y[(i, l)] as f32).collect();
    write(&d.join("in.nii.gz"), N, &vols);
    write(&d.join("mask.nii.gz"), 1, &(0..v).map(|l| in_mask(l) as u8 as f32).collect::<Vec<_>>());
    let rows: String = AGE.iter().map(|a| format!("1 {a}\n")).collect();
    std::fs::write(d.join("design.mat"), format!("/NumWaves 2\n/NumPoints {N}\n/Matrix\n{rows}")).unwrap();
    std::fs::write(d.join("design.con"), "/NumWaves 2\n/NumContrasts 1\n/Matrix\n1 0\n").unwrap();
    std::fs::write(d.join("design.fts"), "/NumWaves 1\n/NumContrasts 1\n/Matrix\n1\n").unwrap();
    (m, y)
}

/// randomise's 1-D kernel for std `s` voxels: radius 2 floor(s - 0.001) + 3, Gaussian
/// weights normalised to sum 1.
fn kernel(s: f64) -> Vec<f64> {
    let r = 2 * ((s - 0.001).floor().max(0.0) as i64) + 3;
    let w: Vec<f64> = (-r..=r).map(|j| (-(j * j) as f64 / (2.0 * s * s)).exp()).collect();
    let sum: f64 = w.iter().sum();
    w.iter().map(|x| x / sum).collect()
}

/// `values` (per grid voxel, used in the mask only) smoothed as randomise smooths sigma^2:
/// at each in-mask voxel, sum_u K(v - u) m(u) values(u) / sum_u K(v - u) m(u) over the
/// grid, K the product of the three axes' kernels.
fn smoothed(values: &[f64]) -> Vec<f64> {
    let k = [0, 1, 2].map(|a| kernel(SIGMA_MM / PIXDIM[a]));
    let mut out = vec![0.0; values.len()];
    for v in (0..nvox()).filter(|&l| in_mask(l)) {
        let pv = xyz(v);
        let (mut num, mut den) = (0.0, 0.0);
        for u in (0..nvox()).filter(|&l| in_mask(l)) {
            let pu = xyz(u);
            let w: Option<f64> = (0..3)
                .map(|a| {
                    let r = (k[a].len() / 2) as i64;
                    let j = pu[a] as i64 - pv[a] as i64;
                    (j.abs() <= r).then(|| k[a][(j + r) as usize])
                })
                .product();
            if let Some(w) = w {
                num += w * values[u];
                den += w;
            }
        }
        out[v] = num / den;
    }
    out
}

/// Per sign flip s (bit i: row i negated), the Freedman–Lane data S R_Z Y + H_Z Y (Z the
/// age column, the nuisance of [1 0]) refitted on M: the pseudo-t map and the plain t map
/// (per grid voxel; 0 outside the mask).
fn oracle(m: &DMatrix<f64>, y: &DMatrix<f64>, bits: u32) -> (Vec<f64>, Vec<f64>) {
    let z = m.columns(1, 1).into_owned();
    let hz = &z * z.clone().pseudo_inverse(1e-12).unwrap();
    let e = y - &hz * y;
    let s = DMatrix::from_fn(N, N, |i, j| {
        if i == j {
            if bits >> i & 1 == 1 {
                -1.0
            } else {
                1.0
            }
        } else {
            0.0
        }
    });
    let ystar = &s * e + &hz * y;
    let pinv = m.clone().pseudo_inverse(1e-12).unwrap();
    let b = &pinv * &ystar;
    let resid = &ystar - m * &b;
    let c = DVector::from_vec(vec![1.0, 0.0]);
    let cvc = (c.transpose() * (m.transpose() * m).try_inverse().unwrap() * &c)[(0, 0)];
    let dof = (N - 2) as f64;
    let sigma2: Vec<f64> = (0..nvox()).map(|l| resid.column(l).norm_squared() / dof).collect();
    let sm = smoothed(&sigma2);
    let (mut pseudo, mut plain) = (vec![0.0; nvox()], vec![0.0; nvox()]);
    for l in (0..nvox()).filter(|&l| in_mask(l)) {
        let cope = (c.transpose() * b.column(l))[(0, 0)];
        pseudo[l] = cope / (cvc * sm[l]).sqrt();
        plain[l] = cope / (cvc * sigma2[l]).sqrt();
    }
    (pseudo, plain)
}

/// Extent of each voxel's cluster of {t >= thr} in the mask, 26-connectivity (flood fill).
fn cluster_extents(t: &[f32]) -> Vec<f32> {
    let above = |l: usize| in_mask(l) && t[l] >= CLUSTER_THR;
    let mut extent = vec![0f32; t.len()];
    let mut seen = vec![false; t.len()];
    for start in (0..t.len()).filter(|&l| above(l)) {
        if seen[start] {
            continue;
        }
        let (mut stack, mut members) = (vec![start], Vec::new());
        seen[start] = true;
        while let Some(a) = stack.pop() {
            members.push(a);
            let p = xyz(a);
            for (b, seen) in seen.iter_mut().enumerate() {
                let q = xyz(b);
                if above(b) && !*seen && (0..3).all(|k| p[k].abs_diff(q[k]) <= 1) {
                    *seen = true;
                    stack.push(b);
                }
            }
        }
        for &a in &members {
            extent[a] = members.len() as f32;
        }
    }
    extent
}

fn run(d: &Path, prefix: &str, backend: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "-i",
        "in",
        "-m",
        "mask",
        "-d",
        "design.mat",
        "-t",
        "design.con",
        "-f",
        "design.fts",
        "-o",
        prefix,
        "-n",
        "100",
        "--perm-kind",
        "flip",
        "-v",
        "3",
        "-x",
        "--uncorrp",
        "-T",
        // The TFCE oracle below runs over every mask voxel; the border rule has its own
        // tests (tfce_edge.rs).
        "--tfce-edge",
        "include",
        "-c",
        "1.0",
        "-N",
        "--permout",
        "--backend",
        backend,
        "--no-report",
    ];
    args.extend(extra);
    let out = crate::common::voxflip(d, &args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{backend}: {err}");
    err
}

/// f32 maps from the engine against f64 refits of a few terms: 1e-4 relative (f32
/// rounding of E, of the projections and of F, each ~1e-6 relative, through a square
/// root and the smoothing's normalised sums, with ample margin).
const AGAINST_F64: Tolerance = Tolerance::rel(1e-4);

#[test]
fn pseudo_t_equals_smoothed_variance_refits() {
    let dir = voxflip_testkit::tempdir().unwrap();
    let d = dir.path();
    let (m, y) = inputs(d);
    run(d, "p", "cpu", &[]);
    let mask: Vec<usize> = (0..nvox()).filter(|&l| in_mask(l)).collect();
    let oracles: Vec<(Vec<f64>, Vec<f64>)> = (0..1u32 << N).map(|bits| oracle(&m, &y, bits)).collect();
    let close = |a: &[f32], b: &[f64]| mask.iter().all(|&l| AGAINST_F64.close(a[l], b[l] as f32));
    // The observed map is the identity's pseudo-t, and differs from the plain t.
    let t = map(&d.join("p_tstat1.nii.gz"));
    let (obs, plain) = &oracles[0];
    assert!(close(&t, obs), "observed pseudo-t");
    assert!(mask.iter().any(|&l| (obs[l] - plain[l]).abs() > 0.05 * plain[l].abs()), "smoothing changes t");
    // The F-test is not smoothed: F = t^2 of the plain t.
    let f = map(&d.join("p_fstat1.nii.gz"));
    assert!(mask.iter().all(|&l| AGAINST_F64.close(f[l], (plain[l] * plain[l]) as f32)), "F is not smoothed");
    // Every permutation's map is one sign flip's pseudo-t, each flip once.
    let null = text_numbers(&d.join("p_vox_corrp_tstat1.txt"));
    let null_tfce = text_numbers(&d.join("p_tfce_corrp_tstat1.txt"));
    assert_eq!(null.len(), 64);
    let graph = MaskGraph::new(DIMS, mask.iter().map(|&l| l as u32).collect(), Connectivity::C6);
    let dh = mask.iter().map(|&l| t[l]).fold(0f32, f32::max) / 100.0;
    let mut matched = [false; 64];
    let mut maxima = vec![0f64; 64];
    for j in 0..64 {
        let name = |what: &str| d.join(format!("p_{what}_perm{:05}_tstat1.nii.gz", j + 1));
        let pt = map(&name("vox"));
        let k = oracles.iter().position(|(o, _)| close(&pt, o));
        let k = k.unwrap_or_else(|| panic!("permutation {j}: no sign flip's pseudo-t gives its map"));
        assert!(!matched[k], "permutation {j}: sign flip {k} twice");
        matched[k] = true;
        maxima[j] = mask.iter().map(|&l| oracles[k].0[l]).fold(f64::MIN, f64::max);
        assert!(AGAINST_F64.close(null[j], maxima[j] as f32), "permutation {j}: null {} vs {}", null[j], maxima[j]);
        // Clusters and TFCE of the pseudo-t map.
        assert_eq!(map(&name("clustere")), cluster_extents(&pt), "permutation {j}: cluster extents");
        let in_mask_t: Vec<f32> = mask.iter().map(|&l| pt[l]).collect();
        let tfce = tfce_stepwise_reference(&graph, &in_mask_t, &TfceParams::default(), dh, &mut Workspace::new());
        let tfce = tfce.unwrap();
        let got = map(&name("tfce"));
        for (i, &l) in mask.iter().enumerate() {
            // The same f32 map through two TFCE implementations: 1e-5 relative.
            assert!(Tolerance::rel(1e-5).close(got[l], tfce[i]), "permutation {j} voxel {l}: TFCE");
        }
        let tmax = tfce.iter().copied().fold(0f32, f32::max);
        assert!(Tolerance::rel(1e-5).close(null_tfce[j], tmax), "permutation {j}: TFCE null");
    }
    // p-values by counting over the oracle's maps (1 - p written), where no permutation's
    // value lies within the tolerance of the observed one (a tie the f32 maps may break).
    let corrp = map(&d.join("p_vox_corrp_tstat1.nii.gz"));
    let uncp = map(&d.join("p_vox_p_tstat1.nii.gz"));
    let mut checked = 0;
    for &l in &mask {
        let t0 = obs[l];
        let near = |x: f64| (x - t0).abs() <= AGAINST_F64.band(t0 as f32) as f64;
        let voxel_values: Vec<f64> = oracles.iter().map(|(o, _)| o[l]).collect();
        if maxima.iter().chain(&voxel_values).any(|&x| near(x) && x != t0) {
            continue;
        }
        let fwe = maxima.iter().filter(|&&x| x >= t0).count() as f32 / 64.0;
        let unc = voxel_values.iter().filter(|&&x| x >= t0).count() as f32 / 64.0;
        assert!((corrp[l] - (1.0 - fwe)).abs() < 1e-6, "voxel {l}: FWE p {} vs {}", 1.0 - corrp[l], fwe);
        assert!((uncp[l] - (1.0 - unc)).abs() < 1e-6, "voxel {l}: uncorrected p {} vs {}", 1.0 - uncp[l], unc);
        checked += 1;
    }
    assert!(checked > mask.len() / 2, "p-values checked at {checked} of {} voxels", mask.len());
    assert!(corrp.iter().any(|&x| x > 0.5), "some voxel is significant at FWE 0.5");
    // The sidecar says so.
    let sidecar = std::fs::read_to_string(d.join("p_voxflip.json")).unwrap();
    assert!(sidecar.contains("\"variance_smoothing_mm\": 3.0"), "{sidecar}");
}

/// The GPU pipeline (its engine's t and F maps, smoothed on the host) equals the CPU's:
/// maps and nulls within the GPU-vs-CPU tolerance of tests/it/backends.rs (1e-4 of
/// max(|T|, 1)), p maps equal; so does a GPU lost in the middle of a smoothed batch (its
/// 4th engine call: with the t contrast first, the F maps of its first batch after the
/// observed map), whose CPU replacement keeps smoothing.
#[test]
fn gpu_pseudo_t_equals_cpu() {
    if !gpu_usable(module_path!()) {
        return;
    }
    let dir = voxflip_testkit::tempdir().unwrap();
    let d = dir.path();
    inputs(d);
    run(d, "cpu", "cpu", &[]);
    run(d, "gpu", "gpu", &[]);
    let err = run(d, "lost", "gpu", &["--gpu-fail-at-batch", "4"]);
    assert!(err.contains("continuing on the CPU"), "{err}");
    let tol = Tolerance::rel(1e-4);
    for other in ["gpu", "lost"] {
        for name in ["tstat1", "vox_perm00017_tstat1", "fstat1"] {
            let (a, b) = (map(&d.join(format!("cpu_{name}.nii.gz"))), map(&d.join(format!("{other}_{name}.nii.gz"))));
            assert!(a.iter().zip(&b).all(|(x, y)| tol.close(*x, *y)), "{other} {name}");
        }
        let (a, b) = (
            text_numbers(&d.join("cpu_vox_corrp_tstat1.txt")),
            text_numbers(&d.join(format!("{other}_vox_corrp_tstat1.txt"))),
        );
        assert!(a.iter().zip(&b).all(|(x, y)| tol.close(*x, *y)), "{other} null");
        for name in ["vox_corrp_tstat1", "vox_p_tstat1"] {
            let (a, b) = (map(&d.join(format!("cpu_{name}.nii.gz"))), map(&d.join(format!("{other}_{name}.nii.gz"))));
            assert_eq!(a, b, "{other} {name}");
        }
    }
}

/// `-v` that is not a positive number of mm is refused in one line, before any output.
#[test]
fn bad_smoothing_std_is_refused() {
    let dir = voxflip_testkit::tempdir().unwrap();
    let d = dir.path();
    inputs(d);
    for bad in ["0", "abc", "nan", "inf", "0.0"] {
        let out = crate::common::voxflip(
            d,
            &["-i", "in", "-m", "mask", "-d", "design.mat", "-t", "design.con", "-o", "q", "-v", bad],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "-v {bad} accepted");
        assert!(err.contains("-v") && err.trim().lines().count() == 1, "-v {bad}: {err}");
        assert!(!d.join("q_tstat1.nii.gz").exists());
    }
}
