//! randomise's voxelwise regressors (--vxl/--vxf) against oracles written here:
//! - the engine's per-voxel path equals randomise's computation done explicitly in f64 at
//!   every voxel and permutation (each voxel's design partitioned as randomise's
//!   `convertContrast` does, the data's confound residuals regressed on the design with its
//!   rows reordered or sign-flipped, by pseudo-inverse), and its null maxima equal a brute
//!   force over every ordering or every sign vector;
//! - a voxelwise regressor equal at every voxel gives the maps of the ordinary design with
//!   that column (t, uncorrected and FWE p, TFCE, clusters);
//! - bad --vxl/--vxf input is refused in one line naming the flag or file.
use crate::cli::{write, Case, DIMS};
use crate::common::all_orderings;
use nalgebra::{DMatrix, DVector};
use voxflip_engines::scheduler::permutation_test;
use voxflip_stats::{
    voxelwise_problem, ConfoundMethod, Contrast, ContrastModel, PermKind, PermSet, StatKind, VoxelwiseEvs,
};

/// A pseudo-random value in [-0.5, 0.5) from an index and a seed (splitmix64: no linear
/// relation between voxels, which would give two voxels the same design space).
pub(crate) fn noise(k: usize, seed: u32) -> f32 {
    let mut z = (k as u64).wrapping_add((seed as u64) << 32).wrapping_add(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 24) as f32 - 0.5
}

/// randomise's t for data `y` on design `m` (its row m replaced by sign[m] * row src[m]),
/// contrast `c`, in f64: `convertContrast`'s Freedman–Lane (W1 = M pinv(c), W2 = M - M c'
/// pinv(c)', data made orthogonal to W2) and `calculateTstat`'s pseudo-inverse fit of
/// [W1 W2] with contrast [1 0 ...], on N - rank(M) degrees of freedom.
fn randomise_t(m: &DMatrix<f64>, c: &[f64], y: &DVector<f64>, src: &[usize], sign: &[f64]) -> f64 {
    let n = m.nrows();
    let cv = DMatrix::from_row_slice(1, c.len(), c);
    let pinv_c = cv.clone().pseudo_inverse(1e-12).unwrap();
    let w1 = m * &pinv_c;
    let w2_all = m - m * cv.transpose() * pinv_c.transpose();
    // randomise keeps the nonzero confound columns only.
    let kept: Vec<_> = w2_all.column_iter().filter(|col| col.amax() > 1e-12).collect();
    let w2 = if kept.is_empty() { DMatrix::zeros(n, 0) } else { DMatrix::from_columns(&kept) };
    let w2_pinv = w2.clone().pseudo_inverse(1e-9).unwrap();
    let ya = y - &w2 * (&w2_pinv * y);
    let full = DMatrix::from_fn(n, 1 + w2.ncols(), |i, k| {
        let r = src[i];
        sign[i] * if k == 0 { w1[(r, 0)] } else { w2[(r, k - 1)] }
    });
    let pinv = full.clone().pseudo_inverse(1e-9).unwrap();
    let beta = &pinv * &ya;
    let resid = &ya - &full * &beta;
    let rank = m.clone().svd(false, false).rank(1e-9);
    let sigma2 = resid.norm_squared() / (n - rank) as f64;
    let var = (&pinv * pinv.transpose())[(0, 0)] * sigma2;
    beta[0] / var.sqrt()
}

/// One case: the engine's observed map, its null maxima in the set's order and its counts,
/// against [`randomise_t`] at every voxel of every permutation of the set, and the sorted
/// null maxima against a brute force over `all` (every ordering or sign vector).
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
fn check_case(
    m: &DMatrix<f64>,
    base: &DMatrix<f64>,
    w: &[f64],
    evs: &VoxelwiseEvs,
    y: &[f32],
    v: usize,
    perms: &PermSet,
    all: &[(Vec<usize>, Vec<f64>)],
) {
    let n = m.nrows();
    let c = Contrast { name: "tstat1".into(), kind: StatKind::T, c: DMatrix::from_column_slice(w.len(), 1, w) };
    let base_model = ContrastModel::new(base, &c).unwrap();
    let vp = voxelwise_problem(m, &base_model, &c, evs, y, v, ConfoundMethod::FreedmanLane);
    let problem = vp.problem;
    assert_eq!(vp.rank_deficient, 0);
    let res = permutation_test(&problem, perms).unwrap();
    assert!(perms.exhaustive && perms.len() == all.len(), "{} of {}", perms.len(), all.len());
    let designs: Vec<DMatrix<f64>> = (0..v).map(|x| evs.design_at(m, v, x)).collect();
    let ys: Vec<DVector<f64>> = (0..v).map(|x| DVector::from_fn(n, |i, _| y[i * v + x] as f64)).collect();
    let t_of = |x: usize, src: &[usize], sign: &[f64]| randomise_t(&designs[x], w, &ys[x], src, sign);
    let ident: Vec<usize> = (0..n).collect();
    let plus = vec![1.0; n];
    let observed: Vec<f64> = (0..v).map(|x| t_of(x, &ident, &plus)).collect();
    // The engine stores E and Q in f32 and runs the f32 epilogue: 1e-4 relative on t.
    let tol = |t: f64| 1e-4 * t.abs().max(1.0);
    for (x, (&got, &want)) in res.observed.iter().zip(&observed).enumerate() {
        assert!((got as f64 - want).abs() < tol(want), "voxel {x}: {got} vs {want}");
    }
    let mut lo = vec![0u32; v];
    let mut hi = vec![0u32; v];
    for j in 0..perms.len() {
        let src: Vec<usize> = (0..n).map(|i| perms.source(j, i)).collect();
        let sign: Vec<f64> = (0..n).map(|i| perms.sign(j, i) as f64).collect();
        let t: Vec<f64> = (0..v).map(|x| t_of(x, &src, &sign)).collect();
        let max = t.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert!((res.null[j] as f64 - max).abs() < tol(max), "permutation {j}: {} vs {max}", res.null[j]);
        for x in 0..v {
            lo[x] += (t[x] >= observed[x] + tol(observed[x])) as u32;
            hi[x] += (t[x] >= observed[x] - tol(observed[x])) as u32;
        }
    }
    for x in 0..v {
        assert!((lo[x]..=hi[x]).contains(&res.counts[x]), "voxel {x}: {} not in {}..={}", res.counts[x], lo[x], hi[x]);
    }
    let mut brute: Vec<f64> =
        all.iter().map(|(src, sign)| (0..v).map(|x| t_of(x, src, sign)).fold(f64::NEG_INFINITY, f64::max)).collect();
    let mut null: Vec<f64> = res.null.iter().map(|&t| t as f64).collect();
    brute.sort_by(f64::total_cmp);
    null.sort_by(f64::total_cmp);
    for (a, b) in null.iter().zip(&brute) {
        assert!((a - b).abs() < tol(*b), "sorted null {a} vs brute force {b}");
    }
}

#[test]
fn per_voxel_path_equals_randomise_refits_and_brute_force() {
    // Relabelings: two groups and a voxelwise covariate, the covariate tested and then the
    // group difference with the covariate as voxelwise nuisance; every ordering of 6 rows.
    let (n, v) = (6usize, 5usize);
    let ev: Vec<f32> = (0..n * v).map(|k| noise(k, 3) * 4.0 + 1.0).collect();
    let y: Vec<f32> = (0..n * v).map(|k| noise(k, 7) + 0.3 * ev[k]).collect();
    let col = |i: usize, k: usize, third: f64| match k {
        0 => (i < 3) as u8 as f64,
        1 => (i >= 3) as u8 as f64,
        _ => third,
    };
    let m = DMatrix::from_fn(n, 3, |i, k| col(i, k, 0.0));
    // The design as given has the covariate's mean over voxels as its placeholder.
    let base = DMatrix::from_fn(n, 3, |i, k| col(i, k, (0..v).map(|x| ev[i * v + x] as f64).sum::<f64>() / v as f64));
    let evs = VoxelwiseEvs { columns: vec![2], values: vec![ev] };
    let labels: Vec<u32> = (0..n as u32).collect();
    let perms = PermSet::generate(n, PermKind::Permute, &labels, 0, 1).unwrap();
    let all: Vec<(Vec<usize>, Vec<f64>)> = all_orderings(n).into_iter().map(|o| (o, vec![1.0; n])).collect();
    for w in [[0.0, 0.0, 1.0], [1.0, -1.0, 0.0], [0.0, 0.0, -1.0]] {
        check_case(&m, &base, &w, &evs, &y, v, &perms, &all);
    }

    // Sign flips: the mean with a voxelwise nuisance covariate, every sign vector of 7 rows.
    let n = 7usize;
    let ev: Vec<f32> = (0..n * v).map(|k| noise(k, 11) * 2.0).collect();
    let y: Vec<f32> = (0..n * v).map(|k| noise(k, 13) + 0.4 - 0.5 * ev[k]).collect();
    let m = DMatrix::from_fn(n, 2, |_, k| if k == 0 { 1.0 } else { 0.0 });
    let base = DMatrix::from_fn(n, 2, |i, k| if k == 0 { 1.0 } else { ev[i * v] as f64 });
    let evs = VoxelwiseEvs { columns: vec![1], values: vec![ev] };
    let labels: Vec<u32> = (0..n as u32).collect();
    let perms = PermSet::generate(n, PermKind::SignFlip, &labels, 0, 1).unwrap();
    let all: Vec<(Vec<usize>, Vec<f64>)> = (0..1u32 << n)
        .map(|b| ((0..n).collect(), (0..n).map(|i| if b >> i & 1 == 1 { -1.0 } else { 1.0 }).collect()))
        .collect();
    check_case(&m, &base, &[1.0, 0.0], &evs, &y, v, &perms, &all);
}

/// A VEST file body.
fn vest(rows: &[Vec<f64>]) -> String {
    let body: String =
        rows.iter().map(|r| r.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" ") + "\n").collect();
    format!("/NumWaves {}\n/NumPoints {}\n/Matrix\n{body}", rows[0].len(), rows.len())
}

fn nvox() -> usize {
    DIMS.iter().product()
}

/// The case's 10 images (two groups of 5) with a covariate `age` in design column 3, and
/// `age.nii.gz`: the covariate at every voxel.
fn covariate_case() -> (Case, Vec<f64>) {
    let c = Case::new();
    let age: Vec<f64> = (0..10).map(|i| 20.0 + ((i * 7) % 10) as f64 * 3.0 + i as f64 * 0.1).collect();
    let rows: Vec<Vec<f64>> = (0..10).map(|i| vec![(i < 5) as u8 as f64, (i >= 5) as u8 as f64, age[i]]).collect();
    c.text("design3.mat", &vest(&rows));
    // tstat3 mirrors tstat2: the two share one product (the mirrored path).
    c.text("design3.con", "/NumWaves 3\n/NumContrasts 3\n/Matrix\n1 -1 0\n0 0 1\n0 0 -1\n");
    let vol: Vec<f32> = (0..10).flat_map(|i| std::iter::repeat_n(age[i] as f32, nvox())).collect();
    write(&c.p("age.nii.gz"), DIMS, 10, &vol);
    (c, age)
}

fn image(c: &Case, name: &str) -> Vec<f32> {
    voxflip_io::read_image(&c.p(name)).unwrap().data
}

#[test]
fn a_voxelwise_regressor_equal_everywhere_gives_the_ordinary_maps() {
    let (c, _) = covariate_case();
    let common = [
        "-i",
        "in.nii.gz",
        "-m",
        "mask.nii.gz",
        "-d",
        "design3.mat",
        "-t",
        "design3.con",
        "-n",
        "300",
        "-x",
        "--uncorrp",
        "-T",
        "-c",
        "1.5",
        "-C",
        "1.5",
        "--backend",
        "cpu",
        "--seed",
        "5",
        "--no-report",
    ];
    let (code, err) = c.run(&[&common[..], &["-o", "out/a"]].concat());
    assert_eq!(code, 0, "{err}");
    let (code, err) = c.run(&[&common[..], &["-o", "out/b", "--vxl=3", "--vxf=age"]].concat());
    assert_eq!(code, 0, "{err}");
    let mut compared = 0;
    for con in ["tstat1", "tstat2", "tstat3"] {
        for map in ["", "vox_p_", "vox_corrp_", "tfce_", "tfce_p_", "tfce_corrp_", "clustere_corrp_", "clusterm_corrp_"]
        {
            let name = format!("{map}{con}.nii.gz");
            let (a, b) = (image(&c, &format!("out/a_{name}")), image(&c, &format!("out/b_{name}")));
            for (k, (x, y)) in a.iter().zip(&b).enumerate() {
                // The per-voxel product runs in f64, the shared one in f32: statistics agree
                // to f32 rounding (1e-5 relative), p-values exactly (no ties that close).
                let tol = if map.ends_with("p_") { 0.0 } else { 1e-5 * x.abs().max(1.0) };
                assert!((x - y).abs() <= tol, "{name} voxel {k}: {x} vs {y}");
            }
            compared += 1;
        }
    }
    assert_eq!(compared, 24);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.p("out/b_voxflip.json")).unwrap()).unwrap();
    assert_eq!(json["voxelwise_evs"][0]["column"], 3);
    assert!(json["voxelwise_evs"][0]["file"].as_str().unwrap().ends_with("age.nii.gz"));
    let plain: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.p("out/a_voxflip.json")).unwrap()).unwrap();
    assert!(plain.get("voxelwise_evs").is_none());
    let t = image(&c, "out/a_tstat2.nii.gz");
    assert!(t.iter().any(|&x| x != 0.0), "the covariate's map is not all zeros");
}

#[test]
fn a_rank_deficient_voxel_gets_zero_and_a_warning() {
    let (c, age) = covariate_case();
    // Voxel 0's regressor is constant: the two group columns already sum to it.
    let mut vol: Vec<f32> = (0..10 * nvox()).map(|k| (age[k / nvox()] + (k % nvox()) as f64 * 0.01) as f32).collect();
    for i in 0..10 {
        vol[i * nvox()] = 1.0;
    }
    write(&c.p("agev.nii.gz"), DIMS, 10, &vol);
    let args = [
        "-i",
        "in.nii.gz",
        "-m",
        "mask.nii.gz",
        "-d",
        "design3.mat",
        "-t",
        "design3.con",
        "-n",
        "20",
        "-o",
        "out/r",
        "--vxl",
        "3",
        "--vxf",
        "agev.nii.gz",
        "--no-report",
    ];
    let (code, err) = c.run(&args);
    assert_eq!(code, 0, "{err}");
    let warned: Vec<&str> = err.lines().filter(|l| l.contains("rank-deficient")).collect();
    // One line per problem built: tstat3 shares tstat2's (its mirror).
    assert_eq!(warned.len(), 2, "one line per contrast: {err}");
    assert!(warned[0].contains("1 of 120 voxels"), "{err}");
    for con in ["tstat1", "tstat2", "tstat3"] {
        let t = image(&c, &format!("out/r_{con}.nii.gz"));
        assert_eq!(t[0], 0.0);
        assert!(t[1..].iter().all(|&x| x != 0.0), "{con}");
    }
}

#[test]
fn bad_voxelwise_input_is_refused_in_one_line() {
    let (c, _) = covariate_case();
    let glm = ["-i", "in.nii.gz", "-m", "mask.nii.gz", "-d", "design3.mat", "-t", "design3.con", "-o", "out/r"];
    let with = |extra: &[&'static str]| -> Vec<&str> { [&glm[..], extra].concat() };
    c.fails(&with(&["--vxl=3"]), "--vxl", "needs --vxf");
    c.fails(&with(&["--vxf=age"]), "--vxf", "needs --vxl");
    c.fails(&with(&["--vxl=3,2", "--vxf=age"]), "--vxl", "2 column(s) but --vxf 1");
    c.fails(&with(&["--vxl=0", "--vxf=age"]), "--vxl", "numbered from 1");
    c.fails(&with(&["--vxl=x", "--vxf=age"]), "--vxl", "not a design column");
    c.fails(&with(&["--vxl=3,3", "--vxf=age,age"]), "--vxl", "named twice");
    c.fails(&with(&["--vxl=4", "--vxf=age"]), "design3.mat", "has 3 column(s)");
    c.fails(&with(&["--vxl=3", "--vxf=nothere"]), "nothere", "");
    c.fails(&with(&["--vxl=3", "--vxf=age", "-D"]), "-D", "not supported");
    // Wrong number of volumes, another grid, another orientation, NaN in the mask.
    write(&c.p("short.nii.gz"), DIMS, 9, &vec![1.0; 9 * nvox()]);
    c.fails(&with(&["--vxl=3", "--vxf=short.nii.gz"]), "short.nii.gz", "has 9 volume(s)");
    write(&c.p("small.nii.gz"), [6, 5, 3], 10, &vec![1.0; 10 * 90]);
    c.fails(&with(&["--vxl=3", "--vxf=small.nii.gz"]), "small.nii.gz", "does not match the data");
    let flipped = voxflip_io::header_from_affine(
        DIMS,
        [2.0, 2.0, 2.0],
        [[2.0, 0.0, 0.0, -10.0], [0.0, 2.0, 0.0, -8.0], [0.0, 0.0, 2.0, -4.0]],
        4,
    );
    voxflip_io::write_image(&c.p("flip.nii.gz"), &flipped, DIMS, 10, &vec![1.0; 10 * nvox()]).unwrap();
    c.fails(&with(&["--vxl=3", "--vxf=flip.nii.gz"]), "flip.nii.gz", "affine");
    let mut nan = vec![1.0; 10 * nvox()];
    nan[5] = f32::NAN;
    write(&c.p("nan.nii.gz"), DIMS, 10, &nan);
    c.fails(&with(&["--vxl=3", "--vxf=nan.nii.gz"]), "nan.nii.gz", "NaN");
}

#[test]
fn voxelwise_regressors_on_the_gpu_give_the_cpu_engines_p_values() {
    if !crate::common::gpu_usable(module_path!()) {
        return;
    }
    let c = Case::new();
    // The mean with a voxelwise nuisance covariate (sign flips: 2^10 = 1024, exhaustive under
    // -n 5000), and its mirror.
    let cov: Vec<f32> = (0..10 * nvox()).map(|k| 2.0 * noise(k, 17) + 0.1 * (k % 7) as f32 - 0.3).collect();
    write(&c.p("cov.nii.gz"), DIMS, 10, &cov);
    // The case's data shifted so that the mean is significant at some voxels.
    let y: Vec<f32> = crate::cli::data(10, 1).iter().zip(&cov).map(|(y, c)| y + 0.25 + 0.3 * c).collect();
    write(&c.p("shifted.nii.gz"), DIMS, 10, &y);
    let mean: Vec<Vec<f64>> = (0..10)
        .map(|i| vec![1.0, (0..nvox()).map(|x| cov[i * nvox() + x] as f64).sum::<f64>() / nvox() as f64])
        .collect();
    c.text("design2.mat", &vest(&mean));
    c.text("design2.con", "/NumWaves 2\n/NumContrasts 2\n/Matrix\n1 0\n-1 0\n");
    let common = [
        "-i",
        "shifted.nii.gz",
        "-m",
        "mask.nii.gz",
        "-d",
        "design2.mat",
        "-t",
        "design2.con",
        "--vxl=2",
        "--vxf=cov",
        "-n",
        "5000",
        "-x",
        "--uncorrp",
        "-T",
        "--spatial-backend",
        "gpu",
        "--no-report",
    ];
    let (code, cpu_err) = c.run(&[&common[..], &["-o", "out/cpu", "--backend", "cpu"]].concat());
    assert_eq!(code, 0, "{cpu_err}");
    let (code, err) = c.run(&[&common[..], &["-o", "out/gpu", "--backend", "gpu"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("exhaustive"), "{err}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.p("out/gpu_voxflip.json")).unwrap()).unwrap();
    assert!(json["backend"].as_str().is_some_and(|b| b.starts_with("gpu: ")), "the GPU engine must have run: {json}");
    let spatial = json["spatial_backend"].as_str().unwrap_or_default();
    assert!(spatial.starts_with("gpu: "), "TFCE on the GPU (maps kept on the device): {spatial}");
    for con in ["tstat1", "tstat2"] {
        for map in ["", "vox_p_", "vox_corrp_", "tfce_", "tfce_p_", "tfce_corrp_"] {
            let name = format!("{map}{con}.nii.gz");
            let (a, b) = (image(&c, &format!("out/cpu_{name}")), image(&c, &format!("out/gpu_{name}")));
            assert_eq!(a.len(), b.len());
            for (k, (x, y)) in a.iter().zip(&b).enumerate() {
                // Exhaustive: every flip and its negation on both engines (the GPU's sums of
                // negated terms are exactly negated), so p-values are identical unless some
                // permutation's statistic lies within rounding of the observed one, which these
                // data do not have. Statistics: the f32 product against the CPU's f64 one, 1e-4
                // relative (gpu_voxelwise's tolerance); TFCE sums 100 levels of them, 1e-3.
                let tol = match map {
                    "" => 1e-4 * x.abs().max(1.0),
                    "tfce_" => 1e-3 * x.abs().max(1.0),
                    _ => 0.0,
                };
                assert!((x - y).abs() <= tol, "{name} voxel {k}: cpu {x} vs gpu {y}");
            }
        }
    }
    let t = image(&c, "out/gpu_vox_corrp_tstat1.nii.gz");
    let best = t.iter().copied().fold(0.0f32, f32::max);
    assert!(best > 0.9, "some voxels are significant, so the p-values say something: 1 - p at most {best}");
}
