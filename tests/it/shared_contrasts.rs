//! Contrasts that share a product: a t contrast followed by its mirror (the weights negated,
//! as tstat1 A > B and tstat2 B > A of the driving study) run from one product per batch on
//! the CPU engine, and write exactly the files the two write run one after the other
//! (`--no-shared-contrasts`): every map, p-map, null and cluster table byte for byte, the
//! sidecar apart from timings. Voxelwise, TFCE and cluster inference; sign flips (the
//! interaction) and Freedman–Lane relabelings with a covariate (a randomise-style GLM); and
//! on the GPU engine, which runs each contrast on its own product, that the mirror's map is
//! the partner's negated and the flag changes nothing.
use crate::common::{gpu_usable, voxflip, SIMULATED_INTERACTION};
use std::path::Path;
use voxflip_io::{header_from_affine, read_image, write_image};

/// The message a run that shares a product logs.
const SHARED: &str = "share one product";

fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// The sidecar without timings, the date and the flag that disables sharing.
fn sidecar_sans_timings(bytes: &[u8]) -> serde_json::Value {
    let mut j: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    let o = j.as_object_mut().unwrap();
    o.remove("seconds_total");
    o.remove("timings");
    o.remove("date");
    o["command_line"].as_array_mut().unwrap().retain(|a| a != "--no-shared-contrasts");
    for c in o["contrasts"].as_array_mut().unwrap() {
        let c = c.as_object_mut().unwrap();
        c.remove("seconds");
        c.remove("gflops");
    }
    j
}

/// Runs `args` (which write under out/r) in `dir` with and without sharing, and checks that
/// both runs write the same files with the same bytes; returns the shared run's stderr and
/// the outputs' names. The shared run's files stay in out/, the other's in separate/.
fn same_with_and_without_sharing(dir: &Path, args: &[&str], what: &str) -> (String, Vec<String>) {
    let run = |extra: &[&str]| -> String {
        let _ = std::fs::remove_dir_all(dir.join("out"));
        std::fs::create_dir(dir.join("out")).unwrap();
        let all: Vec<&str> = args.iter().chain(extra).copied().collect();
        let out = voxflip(dir, &all);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{what} {extra:?}: {err}");
        err
    };
    run(&["--no-shared-contrasts"]);
    let _ = std::fs::remove_dir_all(dir.join("separate"));
    std::fs::rename(dir.join("out"), dir.join("separate")).unwrap();
    let err = run(&[]);
    let (a, b) = (list(&dir.join("separate")), list(&dir.join("out")));
    assert_eq!(a, b, "{what}: the same files");
    for n in &a {
        let (x, y) =
            (std::fs::read(dir.join("separate").join(n)).unwrap(), std::fs::read(dir.join("out").join(n)).unwrap());
        if n.ends_with("_report.html") {
            // The report shows the run's date and timings; it is drawn from the files above.
            continue;
        } else if n.ends_with(".json") {
            assert_eq!(sidecar_sans_timings(&x), sidecar_sans_timings(&y), "{what}: {n}");
        } else {
            assert!(x == y, "{what}: {n} differs");
        }
    }
    (err, a)
}

/// The files of contrast `k` that a run with `-x --uncorrp -N -T -c -C` writes.
fn expect_files(files: &[String], k: usize, what: &str) {
    for stem in ["", "vox_p_", "vox_corrp_", "tfce_", "tfce_corrp_", "tfce_p_", "clustere_corrp_", "clusterm_corrp_"] {
        let name = format!("r_{stem}tstat{k}.nii.gz");
        assert!(files.contains(&name), "{what}: {name} in {files:?}");
    }
    for stem in ["vox_corrp_", "tfce_corrp_", "clustere_corrp_", "clusterm_corrp_"] {
        let name = format!("r_{stem}tstat{k}.txt");
        assert!(files.contains(&name), "{what}: {name} in {files:?}");
    }
}

/// The driving study's design (interaction: tstat1 A > B, tstat2 B > A, tstat3 the time
/// effect) on the simulated small grid, sign flips: tstat1 and tstat2 share a product.
#[test]
fn interaction_shares_the_mirror_and_writes_the_same_files() {
    let tmp = voxflip_testkit::tempdir().unwrap();
    let d = tmp.path();
    assert!(voxflip(d, &["simulate", "--out", "data", "--grid", "small"]).status.success());
    let mut args: Vec<&str> = SIMULATED_INTERACTION.to_vec();
    args.extend([
        "-o",
        "out/r",
        "-n",
        "300",
        "-x",
        "--uncorrp",
        "-N",
        "-T",
        "-c",
        "3.0",
        "-C",
        "3.0",
        "--backend",
        "cpu",
    ]);
    let (err, files) = same_with_and_without_sharing(d, &args, "interaction");
    assert!(err.contains(&format!("tstat1 and tstat2 {SHARED}")), "{err}");
    for k in 1..=3 {
        expect_files(&files, k, "interaction");
    }
    // Not vacuous: the two contrasts' nulls differ (the maxima of T and of -T).
    let null = |k: usize| std::fs::read_to_string(d.join(format!("out/r_vox_corrp_tstat{k}.txt"))).unwrap();
    assert_ne!(null(1), null(2));
}

/// A randomise-style GLM: two groups and a covariate, relabelings with Freedman–Lane (the
/// matrix product), contrasts [1 -1 0], [-1 1 0], [0 0 1], [0 0 -1] and an F-test: both
/// pairs share; the F-test runs alone.
#[test]
fn glm_pairs_share_and_write_the_same_files() {
    let tmp = voxflip_testkit::tempdir().unwrap();
    let d = tmp.path();
    let (dims, n) = ([9usize, 8, 7], 14usize);
    let nvox: usize = dims.iter().product();
    let noise = |k: usize| {
        let h = (k as u32).wrapping_mul(2654435761).rotate_left(13).wrapping_mul(40503);
        ((h >> 8) % 10_000) as f32 / 10_000.0 - 0.5
    };
    let age: Vec<f32> = (0..n).map(|i| ((i * 7) % n) as f32 / n as f32 - 0.5).collect();
    let y: Vec<f32> = (0..n * nvox)
        .map(|k| {
            let (i, v) = (k / nvox, k % nvox);
            let blob = if v % dims[0] < 4 && i < n / 2 { 0.8 } else { 0.0 };
            1.0 + blob + 0.5 * age[i] * (v % 3) as f32 + noise(k)
        })
        .collect();
    let h =
        header_from_affine(dims, [2.0; 3], [[2.0, 0.0, 0.0, -8.0], [0.0, 2.0, 0.0, -7.0], [0.0, 0.0, 2.0, -6.0]], 4);
    write_image(&d.join("in.nii.gz"), &h, dims, n, &y).unwrap();
    let rows: String =
        (0..n).map(|i| format!("{} {} {}\n", u8::from(i < n / 2), u8::from(i >= n / 2), age[i])).collect();
    std::fs::write(d.join("design.mat"), format!("/NumWaves 3\n/NumPoints {n}\n/Matrix\n{rows}")).unwrap();
    let con = "/NumWaves 3\n/NumContrasts 4\n/Matrix\n1 -1 0\n-1 1 0\n0 0 1\n0 0 -1\n";
    std::fs::write(d.join("design.con"), con).unwrap();
    std::fs::write(d.join("design.fts"), "/NumWaves 4\n/NumContrasts 1\n/Matrix\n1 0 1 0\n").unwrap();
    let args = [
        "-i",
        "in.nii.gz",
        "-o",
        "out/r",
        "-d",
        "design.mat",
        "-t",
        "design.con",
        "-f",
        "design.fts",
        "-n",
        "250",
        "-x",
        "--uncorrp",
        "-N",
        "-T",
        "-c",
        "2.0",
        "-C",
        "2.0",
        "-F",
        "3.0",
        "--backend",
        "cpu",
        "--no-report",
    ];
    let (err, files) = same_with_and_without_sharing(d, &args, "glm");
    assert!(err.contains(&format!("tstat1 and tstat2 {SHARED}")), "{err}");
    assert!(err.contains(&format!("tstat3 and tstat4 {SHARED}")), "{err}");
    for k in 1..=4 {
        expect_files(&files, k, "glm");
    }
    assert!(files.contains(&"r_fstat1.nii.gz".to_string()), "{files:?}");
}

/// The GPU engine runs each contrast on its own product: the flag changes nothing, and the
/// mirror's problem (its partner's negated) gives it exactly the negated map.
#[test]
fn gpu_mirror_is_the_negated_map_and_the_flag_changes_nothing() {
    if !gpu_usable("gpu_mirror_is_the_negated_map_and_the_flag_changes_nothing") {
        return;
    }
    let tmp = voxflip_testkit::tempdir().unwrap();
    let d = tmp.path();
    assert!(voxflip(d, &["simulate", "--out", "data", "--grid", "small"]).status.success());
    let mut args: Vec<&str> = SIMULATED_INTERACTION.to_vec();
    args.extend(["-o", "out/r", "-n", "100", "-x", "--uncorrp", "-T", "-c", "3.0", "--backend", "gpu", "--no-report"]);
    let (err, _) = same_with_and_without_sharing(d, &args, "gpu");
    assert!(!err.contains(SHARED), "the GPU engine shares no product: {err}");
    let map = |name: &str| read_image(&d.join(format!("out/r_{name}.nii.gz"))).unwrap().data;
    let (t1, t2) = (map("tstat1"), map("tstat2"));
    assert!(t1.iter().any(|&t| t != 0.0));
    for (a, b) in t1.iter().zip(&t2) {
        assert!(*b == -*a, "{a} vs {b}");
    }
}
