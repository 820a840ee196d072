//! randomise's confound methods (-U 0..3), its GLM maps (--glm_output) and its raw cluster
//! maps (-R), each against an oracle written here: explicit f64 refits per permutation
//! over every relabeling of a small design, closed-form least squares, and a flood fill.
use crate::common::gpu_usable;
use nalgebra::{DMatrix, DVector};
use std::path::Path;
use voxflip_io::{header_from_affine, write_image};

const DIMS: [usize; 3] = [4, 3, 2];
const N: usize = 7;
const AGE: [f64; N] = [31.0, 45.0, 28.0, 52.0, 39.0, 60.0, 24.0];
/// The inputs `design_and_data` writes, as flags.
const INPUTS: [&str; 8] = ["-i", "in.nii.gz", "-m", "mask.nii.gz", "-d", "design.mat", "-t", "design.con"];
const GROUP: [f64; N] = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];

fn nvox() -> usize {
    DIMS.iter().product()
}

fn write(path: &Path, dims: [usize; 3], nvol: usize, data: &[f32]) {
    let affine = [[2.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]];
    let h = header_from_affine(dims, [2.0, 2.0, 2.0], affine, 4);
    write_image(path, &h, dims, nvol, data).unwrap();
}

fn map(path: &Path) -> Vec<f32> {
    voxflip_io::read_image(path).unwrap().data
}

/// Hash noise in [-0.5, 0.5).
fn noise(k: usize, seed: u32) -> f64 {
    let h = (k as u32).wrapping_mul(2654435761).wrapping_add(seed.wrapping_mul(40503)).wrapping_mul(2246822519);
    ((h >> 8) % 10007) as f64 / 10007.0 - 0.5
}

/// The design [1, group, age] and its data: volumes with a group effect in half the
/// voxels and an age effect in all, on the full grid (x fastest), image i at offset i V.
fn design_and_data(dir: &Path) -> (DMatrix<f64>, DMatrix<f64>) {
    let v = nvox();
    let m = DMatrix::from_fn(N, 3, |i, k| [1.0, GROUP[i], AGE[i]][k]);
    let y = DMatrix::from_fn(N, v, |i, x| {
        let effect = if x % 2 == 0 { 0.6 * GROUP[i] } else { 0.0 };
        effect + 0.02 * AGE[i] + noise(i * v + x, 3)
    });
    let vols: Vec<f32> = (0..N).flat_map(|i| (0..v).map(move |x| (i, x))).map(|(i, x)| y[(i, x)] as f32).collect();
    write(&dir.join("in.nii.gz"), DIMS, N, &vols);
    write(&dir.join("mask.nii.gz"), DIMS, 1, &vec![1.0; v]);
    let rows: String = (0..N).map(|i| format!("1 {} {}\n", GROUP[i], AGE[i])).collect();
    std::fs::write(dir.join("design.mat"), format!("/NumWaves 3\n/NumPoints {N}\n/Matrix\n{rows}")).unwrap();
    std::fs::write(dir.join("design.con"), "/NumWaves 3\n/NumContrasts 2\n/Matrix\n0 1 0\n0 -1 0\n").unwrap();
    (m, y)
}

/// Residuals of `d` after least squares on the columns of `a`.
fn residuals(a: &DMatrix<f64>, d: &DMatrix<f64>) -> DMatrix<f64> {
    d - a * (a.clone().pseudo_inverse(1e-12).unwrap() * d)
}

/// The t of contrast `c` per column of `d` regressed on `a`, with `dof` residual degrees
/// of freedom: c'b / sqrt(c'(A'A)^-1 c * RSS / dof).
fn t_refit(a: &DMatrix<f64>, d: &DMatrix<f64>, c: &DVector<f64>, dof: f64) -> Vec<f64> {
    let inv = (a.transpose() * a).try_inverse().unwrap();
    let b = &inv * a.transpose() * d;
    let r = d - a * &b;
    let scale = (c.transpose() * &inv * c)[(0, 0)];
    (0..d.ncols())
        .map(|x| (c.transpose() * b.column(x))[(0, 0)] / (scale * r.column(x).norm_squared() / dof).sqrt())
        .collect()
}

fn permuted_rows(a: &DMatrix<f64>, p: &[usize]) -> DMatrix<f64> {
    DMatrix::from_fn(a.nrows(), a.ncols(), |i, k| a[(p[i], k)])
}

/// One method's statistics, by its definition (randomise's convertContrast: permute the
/// model's rows, regress the method's data): the observed map and one map per permutation.
fn method_maps(
    u: u8,
    m: &DMatrix<f64>,
    y: &DMatrix<f64>,
    sign: f64,
    perms: &[Vec<usize>],
) -> (Vec<f64>, Vec<Vec<f64>>) {
    let x = m.columns(1, 1).into_owned();
    let z = DMatrix::from_columns(&[m.column(0), m.column(2)]);
    let rz_y = residuals(&z, y);
    let rz_x = residuals(&z, &x);
    let c3 = DVector::from_column_slice(&[0.0, sign, 0.0]);
    let c1 = DVector::from_element(1, sign);
    let dof = (N - 3) as f64;
    let observed = match u {
        0 => t_refit(&rz_x, &rz_y, &c1, (N - 1) as f64),
        _ => t_refit(m, y, &c3, dof),
    };
    let maps = perms
        .iter()
        .map(|p| match u {
            0 => t_refit(&permuted_rows(&rz_x, p), &rz_y, &c1, (N - 1) as f64),
            1 => t_refit(&permuted_rows(m, p), &rz_y, &c3, dof),
            2 => t_refit(&permuted_rows(m, p), y, &c3, dof),
            // ter Braak: the full model's residuals; the identity stands for the data.
            _ if p.iter().enumerate().all(|(i, &j)| i == j) => observed.clone(),
            _ => t_refit(&permuted_rows(m, p), &residuals(m, y), &c3, dof),
        })
        .collect();
    (observed, maps)
}

/// The counts a p-value may come from: #{j : T_j >= t} with T_j within `tol` of t counted
/// either way (f32 rounding on one side, f64 on the other), as a range.
fn count_range(values: impl Iterator<Item = f64> + Clone, t: f64) -> (usize, usize) {
    let tol = 1e-4 * t.abs().max(1.0);
    (values.clone().filter(|&s| s >= t + tol).count(), values.filter(|&s| s >= t - tol).count())
}

/// Each -U method, exhaustively (all 7! relabelings), on the CPU and GPU engines: the t
/// maps equal the method's refit, and the uncorrected and FWE p-values the brute-force
/// counts over the permutations' refits.
#[test]
fn confound_methods_equal_their_refits_and_counts() {
    let dir = voxflip_testkit::tempdir().unwrap();
    let d = dir.path();
    let (m, y) = design_and_data(d);
    let perms = voxflip_testkit::all_orderings(N);
    let np = perms.len();
    let mut backends = vec!["cpu"];
    if gpu_usable("confound methods on the GPU engine") {
        backends.push("gpu");
    }
    for backend in backends {
        for u in 0..4u8 {
            let prefix = format!("u{u}_{backend}");
            let us = u.to_string();
            let args = [
                &INPUTS[..],
                // Every row permutation: the design's rows are all distinct (a covariate), and
                // --effective_design tells permutations apart by them instead of by the
                // contrast's effective regressor (the group alone, 35 relabelings).
                &["-o", &prefix, "-n", "6000", "-x", "--uncorrp", "-U", &us, "--backend", backend, "--no-report"],
                &["--effective_design", "design.mat"],
            ]
            .concat();
            let out = crate::common::voxflip(d, &args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{args:?}: {err}");
            assert!(err.contains(&format!("all {np} distinct")), "exhaustive expected: {err}");
            for (ci, sign) in [(1, 1.0), (2, -1.0)] {
                let (observed, maps) = method_maps(u, &m, &y, sign, &perms);
                let file = |what: &str| map(&d.join(format!("{prefix}_{what}tstat{ci}.nii.gz")));
                let (t, p, corrp) = (file(""), file("vox_p_"), file("vox_corrp_"));
                let maxima: Vec<f64> = maps.iter().map(|m| m.iter().copied().fold(f64::MIN, f64::max)).collect();
                for x in 0..nvox() {
                    let what = format!("-U {u} {backend} tstat{ci} voxel {x}");
                    // f32 data and arithmetic against f64: 1e-4 relative.
                    assert!(
                        (t[x] as f64 - observed[x]).abs() < 1e-4 * observed[x].abs().max(1.0),
                        "{what}: t {} vs {}",
                        t[x],
                        observed[x]
                    );
                    let counted = |one_minus_p: f32| ((1.0 - one_minus_p as f64) * np as f64).round() as usize;
                    let (lo, hi) = count_range(maps.iter().map(|m| m[x]), observed[x]);
                    let got = counted(p[x]);
                    assert!(lo <= got && got <= hi, "{what}: uncorrected count {got} not in {lo}..={hi}");
                    let (lo, hi) = count_range(maxima.iter().copied(), observed[x]);
                    let got = counted(corrp[x]);
                    assert!(lo <= got && got <= hi, "{what}: FWE count {got} not in {lo}..={hi}");
                }
            }
        }
    }
}

/// --glm_output: pe, cope, varcope and sigmasqr equal the closed forms of the least-squares
/// fit written here, b = (M'M)^-1 M'y, cope = c'b, sigma^2 = RSS/(N - 3),
/// varcope = c'(M'M)^-1 c sigma^2, one volume per column or t contrast.
#[test]
fn glm_output_maps_equal_the_least_squares_fit() {
    let dir = voxflip_testkit::tempdir().unwrap();
    let d = dir.path();
    let (m, y) = design_and_data(d);
    let args = [&INPUTS[..], &["-o", "g", "-n", "20", "--glm_output", "--backend", "cpu", "--no-report"]].concat();
    let out = crate::common::voxflip(d, &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let inv = (m.transpose() * &m).try_inverse().unwrap();
    let b = &inv * m.transpose() * &y;
    let rss: Vec<f64> = (0..nvox()).map(|x| (y.column(x) - &m * b.column(x)).norm_squared()).collect();
    let sigma2: Vec<f64> = rss.iter().map(|r| r / (N - 3) as f64).collect();
    let cons = [[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]];
    let read = |what: &str, vols: usize| {
        let img = voxflip_io::read_image(&d.join(format!("g_glm_{what}.nii.gz"))).unwrap();
        assert_eq!((img.dims, img.nvol), (DIMS, vols), "{what}");
        img.data
    };
    // f32 data and storage against f64: 1e-4 relative.
    let close =
        |a: f32, b: f64, what: &str| assert!((a as f64 - b).abs() < 1e-4 * b.abs().max(1e-2), "{what}: {a} vs {b}");
    let v = nvox();
    let pe = read("pe", 3);
    let (cope, varcope, s2) = (read("cope", 2), read("varcope", 2), read("sigmasqr", 1));
    for x in 0..v {
        for k in 0..3 {
            close(pe[k * v + x], b[(k, x)], &format!("pe{k} voxel {x}"));
        }
        close(s2[x], sigma2[x], &format!("sigmasqr voxel {x}"));
        for (j, c) in cons.iter().enumerate() {
            let c = DVector::from_column_slice(c);
            close(cope[j * v + x], (c.transpose() * b.column(x))[(0, 0)], &format!("cope{j} voxel {x}"));
            close(
                varcope[j * v + x],
                (c.transpose() * &inv * &c)[(0, 0)] * sigma2[x],
                &format!("varcope{j} voxel {x}"),
            );
        }
    }
}

/// Connected components of {t >= thr} on the grid, 26-connectivity (randomise's for
/// clusters), by flood fill: per voxel its component's extent and mass (0 outside).
fn flood_fill(t: &[f32], dims: [usize; 3], thr: f32) -> (Vec<f64>, Vec<f64>) {
    let idx = |x: usize, y: usize, z: usize| x + dims[0] * (y + dims[1] * z);
    let mut label = vec![usize::MAX; t.len()];
    let (mut extent, mut mass) = (vec![0.0; t.len()], vec![0.0; t.len()]);
    for start in 0..t.len() {
        if t[start] < thr || label[start] != usize::MAX {
            continue;
        }
        let (mut stack, mut members) = (vec![start], Vec::new());
        label[start] = start;
        while let Some(a) = stack.pop() {
            members.push(a);
            let (x, y, z) = (a % dims[0], (a / dims[0]) % dims[1], a / (dims[0] * dims[1]));
            for dz in -1i64..=1 {
                for dy in -1i64..=1 {
                    for dx in -1i64..=1 {
                        let (nx, ny, nz) = (x as i64 + dx, y as i64 + dy, z as i64 + dz);
                        if nx < 0
                            || ny < 0
                            || nz < 0
                            || nx >= dims[0] as i64
                            || ny >= dims[1] as i64
                            || nz >= dims[2] as i64
                        {
                            continue;
                        }
                        let b = idx(nx as usize, ny as usize, nz as usize);
                        if t[b] >= thr && label[b] == usize::MAX {
                            label[b] = start;
                            stack.push(b);
                        }
                    }
                }
            }
        }
        let sum: f64 = members.iter().map(|&a| t[a] as f64).sum();
        for &a in &members {
            extent[a] = members.len() as f64;
            mass[a] = sum;
        }
    }
    (extent, mass)
}

/// -R with -c and -C: _clustere_tstat1 and _clusterm_tstat1 hold, per voxel, the extent and
/// the mass of its cluster in the written t map (a flood fill here), 0 outside clusters;
/// without -R neither is written.
#[test]
fn raw_cluster_maps_equal_a_flood_fill() {
    let dir = voxflip_testkit::tempdir().unwrap();
    let d = dir.path();
    let dims = [9usize, 8, 5];
    let v: usize = dims.iter().product();
    let n = 10;
    // A blob of signal in one corner, another smaller one, noise elsewhere.
    let vols: Vec<f32> = (0..n * v)
        .map(|k| {
            let x = k % v;
            let (i, j, l) = (x % 9, (x / 9) % 8, x / 72);
            let blob = (i < 3 && j < 3 && l < 3) || (i > 5 && j > 5 && l > 2);
            (if blob { 0.8 } else { 0.0 } + noise(k, 7)) as f32
        })
        .collect();
    write(&d.join("in.nii.gz"), dims, n, &vols);
    write(&d.join("mask.nii.gz"), dims, 1, &vec![1.0; v]);
    let base = [
        "-i",
        "in.nii.gz",
        "-m",
        "mask.nii.gz",
        "-1",
        "-n",
        "50",
        "-c",
        "2.0",
        "-C",
        "2.0",
        "--backend",
        "cpu",
        "--no-report",
    ];
    let run = |prefix: &str, extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(&["-o", prefix]);
        args.extend_from_slice(extra);
        let out = crate::common::voxflip(d, &args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    run("raw", &["-R"]);
    run("plain", &[]);
    let t = map(&d.join("raw_tstat1.nii.gz"));
    let (extent, mass) = flood_fill(&t, dims, 2.0);
    assert!(
        extent.iter().any(|&e| e >= 5.0),
        "the test needs clusters: {:?}",
        extent.iter().fold(0.0f64, |a, &b| a.max(b))
    );
    let (e_map, m_map) = (map(&d.join("raw_clustere_tstat1.nii.gz")), map(&d.join("raw_clusterm_tstat1.nii.gz")));
    for x in 0..v {
        assert_eq!(e_map[x] as f64, extent[x], "extent at voxel {x}");
        // Masses summed in f64 on both sides from the same f32 t values: 1e-5 relative.
        assert!(
            (m_map[x] as f64 - mass[x]).abs() <= 1e-5 * mass[x].abs().max(1.0),
            "mass at voxel {x}: {} vs {}",
            m_map[x],
            mass[x]
        );
    }
    let exists = |name: &str| d.join(name).exists();
    assert!(!exists("plain_clustere_tstat1.nii.gz") && !exists("plain_clusterm_tstat1.nii.gz"));
    assert!(exists("plain_clustere_corrp_tstat1.nii.gz"));
}

/// -U outside 0..3 and --film (not implemented) are refused in one line, before any output.
#[test]
fn confound_method_out_of_range_and_film_are_refused() {
    let dir = voxflip_testkit::tempdir().unwrap();
    let d = dir.path();
    design_and_data(d);
    let base = ["-i", "in.nii.gz", "-d", "design.mat", "-t", "design.con", "-o", "r", "--backend", "cpu"];
    for (extra, words) in [(&["-U", "4"][..], "-U 4: randomise's confound methods are 0"), (&["--film"][..], "--film")]
    {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let out = crate::common::voxflip(d, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(lines.len() == 1 && lines[0].contains(words), "{extra:?}: {err}");
        let written: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("r_"))
            .collect();
        assert!(written.is_empty(), "{extra:?}: outputs written");
    }
}

fn null_file(path: &Path) -> Vec<f32> {
    std::fs::read_to_string(path).unwrap().split_whitespace().map(|s| s.parse().unwrap()).collect()
}

/// --permout on an exhaustive one-sample test (all 2^6 sign flips), with TFCE and cluster
/// extent: permutation 1's map is the t map; the statistic maps are the 64 sign flips'
/// one-sample t refits (each matched once); each map's maximum is that permutation's entry
/// of the -N null, as are its TFCE and cluster maps' maxima; the cluster maps are the flood
/// fill of their statistic map. Too many maps, and --shard, are refused in one line.
#[test]
fn permout_maps_are_the_permutations_statistics() {
    let dir = voxflip_testkit::tempdir().unwrap();
    let d = dir.path();
    let (n, v) = (6usize, nvox());
    let y = DMatrix::from_fn(n, v, |i, x| 0.3 + noise(i * v + x, 11) + if x < 8 { 0.4 } else { 0.0 });
    let vols: Vec<f32> = (0..n).flat_map(|i| (0..v).map(move |x| (i, x))).map(|(i, x)| y[(i, x)] as f32).collect();
    write(&d.join("in.nii.gz"), DIMS, n, &vols);
    write(&d.join("mask.nii.gz"), DIMS, 1, &vec![1.0; v]);
    let thr = "1.5";
    let args = [
        "-i",
        "in.nii.gz",
        "-m",
        "mask.nii.gz",
        "-1",
        "-o",
        "p",
        "-n",
        "100",
        "-T",
        "-c",
        thr,
        "-N",
        "--permout",
        "--backend",
        "cpu",
        "--no-report",
    ];
    let out = crate::common::voxflip(d, &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The 64 sign flips' one-sample t, y_i s_i over sd / sqrt(n), explicitly.
    let refits: Vec<Vec<f64>> = (0..1u32 << n)
        .map(|bits| {
            (0..v)
                .map(|x| {
                    let z: Vec<f64> = (0..n).map(|i| if bits >> i & 1 == 1 { -y[(i, x)] } else { y[(i, x)] }).collect();
                    let mean = z.iter().sum::<f64>() / n as f64;
                    let var = z.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
                    mean / (var / n as f64).sqrt()
                })
                .collect()
        })
        .collect();
    let (null_t, null_tfce, null_ext) = (
        null_file(&d.join("p_vox_corrp_tstat1.txt")),
        null_file(&d.join("p_tfce_corrp_tstat1.txt")),
        null_file(&d.join("p_clustere_corrp_tstat1.txt")),
    );
    assert_eq!(null_t.len(), 64);
    let mut matched = [false; 64];
    let maximum = |m: &[f32]| m.iter().copied().fold(f32::MIN, f32::max);
    for j in 0..64 {
        let name = |what: &str| d.join(format!("p_{what}_perm{:05}_tstat1.nii.gz", j + 1));
        let t = map(&name("vox"));
        if j == 0 {
            assert_eq!(t, map(&d.join("p_tstat1.nii.gz")), "permutation 1 is the observed map");
        }
        // f32 against f64: 1e-4 relative.
        let found =
            refits.iter().position(|r| r.iter().zip(&t).all(|(a, &b)| (a - b as f64).abs() < 1e-4 * a.abs().max(1.0)));
        let k = found.unwrap_or_else(|| panic!("permutation {j}: no sign flip gives its map"));
        assert!(!matched[k], "permutation {j}: sign flip {k} written twice");
        matched[k] = true;
        // The same engine's maps as its nulls: equal to f32 rounding (1e-6 relative).
        let same = |a: f32, b: f32| (a - b).abs() <= 1e-6 * a.abs().max(1.0);
        assert!(same(maximum(&t), null_t[j]), "permutation {j}: max {} vs null {}", maximum(&t), null_t[j]);
        let tfce = map(&name("tfce"));
        assert!(
            same(maximum(&tfce), null_tfce[j]),
            "permutation {j}: TFCE max {} vs null {}",
            maximum(&tfce),
            null_tfce[j]
        );
        let ext = map(&name("clustere"));
        let (oracle, _) = flood_fill(&t, DIMS, 1.5);
        assert_eq!(ext.iter().map(|&e| e as f64).collect::<Vec<_>>(), oracle, "permutation {j}: cluster map");
        assert_eq!(maximum(&ext).max(0.0), null_ext[j].max(0.0), "permutation {j}: cluster null");
    }
    assert!(!d.join("p_vox_perm00065_tstat1.nii.gz").exists());
    // Bounds and sharding, refused before any output.
    let big: Vec<f32> = (0..16 * v).map(|k| noise(k, 5) as f32).collect();
    write(&d.join("big.nii.gz"), DIMS, 16, &big);
    let refused = [
        (vec!["-i", "big.nii.gz", "-1", "-o", "q", "-n", "20000", "--permout"], "--permout would write 20000 maps"),
        (vec!["-i", "big.nii.gz", "-1", "-o", "q", "-n", "50", "--permout", "--shard", "1/2"], "not with --shard"),
    ];
    for (args, words) in refused {
        let out = crate::common::voxflip(d, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        // The permutation set is announced before its size is known to be too large.
        let lines: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(lines.len() == 1 && lines[0].contains(words), "{args:?}: {err}");
        assert!(!std::fs::read_dir(d).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with("q_")));
    }
}
