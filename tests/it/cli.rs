//! The command line as a user meets it: bad input gets one line naming the file and the
//! problem, exit code 2, no panic and no output files; good input gets randomise's files.
use std::path::{Path, PathBuf};
use std::process::Command;
use voxflip_io::{header_from_affine, write_image};

pub(crate) const DIMS: [usize; 3] = [6, 5, 4];

fn affine() -> [[f64; 4]; 3] {
    [[-2.0, 0.0, 0.0, 10.0], [0.0, 2.0, 0.0, -8.0], [0.0, 0.0, 2.0, -4.0]]
}

pub(crate) fn write(path: &Path, dims: [usize; 3], nvol: usize, data: &[f32]) {
    let h = header_from_affine(dims, [2.0, 2.0, 2.0], affine(), 4);
    write_image(path, &h, dims, nvol, data).unwrap();
}

/// Noise with a positive shift so a one-sample test finds something.
pub(crate) fn data(n: usize, seed: u32) -> Vec<f32> {
    let nvox = DIMS.iter().product::<usize>();
    (0..n * nvox)
        .map(|k| {
            let h = (k as u32).wrapping_mul(2654435761).wrapping_add(seed.wrapping_mul(40503));
            ((h >> 8) % 1000) as f32 / 1000.0 - 0.4
        })
        .collect()
}

pub(crate) struct Case {
    dir: voxflip_testkit::TempDir,
}

impl Case {
    pub(crate) fn new() -> Case {
        let c = Case { dir: voxflip_testkit::tempdir().unwrap() };
        write(&c.p("in.nii.gz"), DIMS, 10, &data(10, 1));
        write(&c.p("mask.nii.gz"), DIMS, 1, &vec![1.0; DIMS.iter().product()]);
        c.text("design.mat", "/NumWaves 2\n/NumPoints 10\n/Matrix\n1 0\n1 0\n1 0\n1 0\n1 0\n0 1\n0 1\n0 1\n0 1\n0 1\n");
        c.text("design.con", "/NumWaves 2\n/NumContrasts 1\n/Matrix\n1 -1\n");
        std::fs::create_dir(c.p("out")).unwrap();
        c
    }
    pub(crate) fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub(crate) fn text(&self, name: &str, s: &str) {
        std::fs::write(self.p(name), s).unwrap();
    }
    pub(crate) fn run(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_voxflip"))
            .args(args)
            .current_dir(self.dir.path())
            .env("XDG_RUNTIME_DIR", "/tmp")
            .output()
            .unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).to_string())
    }
    pub(crate) fn outputs(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.p("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    }
    /// Expect a clean failure mentioning `file` and `words`.
    pub(crate) fn fails(&self, args: &[&str], file: &str, words: &str) {
        let (code, err) = self.run(args);
        assert_eq!(code, 2, "exit code for {args:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line expected: {err}");
        assert!(lines[0].contains(file), "message should name {file}: {err}");
        assert!(lines[0].contains(words), "message should say '{words}': {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(self.outputs().is_empty(), "no outputs expected, found {:?}", self.outputs());
    }
}

pub(crate) const GLM: [&str; 10] =
    ["-i", "in.nii.gz", "-o", "out/r", "-d", "design.mat", "-t", "design.con", "-n", "50"];

fn glm_with(extra: &[&'static str]) -> Vec<&'static str> {
    let mut v = GLM.to_vec();
    v.extend_from_slice(extra);
    v
}

#[test]
fn good_run_writes_randomise_outputs_and_provenance() {
    let c = Case::new();
    let (code, err) = c.run(&glm_with(&["-m", "mask.nii.gz", "-x", "--uncorrp", "--save-null", "--backend", "cpu"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        c.outputs(),
        vec![
            "r_clusters_tstat1.tsv",
            "r_lmax_tstat1.tsv",
            "r_mean.nii.gz",
            "r_report.html",
            "r_tstat1.nii.gz",
            "r_vox_corrp_tstat1.nii.gz",
            "r_vox_corrp_tstat1.txt",
            "r_vox_p_tstat1.nii.gz",
            "r_voxflip.json"
        ]
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.p("out/r_voxflip.json")).unwrap()).unwrap();
    assert_eq!(json["permutations"], 50);
    assert_eq!(json["seed"], 0);
    assert!(json["command_line"].as_array().unwrap().iter().any(|a| a == "design.mat"));
    let null = std::fs::read_to_string(c.p("out/r_vox_corrp_tstat1.txt")).unwrap();
    assert_eq!(null.lines().count(), 50);
    // The map keeps the input's grid and affine.
    let t = voxflip_io::read_image(&c.p("out/r_tstat1.nii.gz")).unwrap();
    assert_eq!(t.dims, DIMS);
    assert_eq!(t.affine, affine());
    // 1 - p convention: corrected 1-p values in [0, 1 - 1/P].
    let cp = voxflip_io::read_image(&c.p("out/r_vox_corrp_tstat1.nii.gz")).unwrap();
    assert!(cp.data.iter().all(|&x| (0.0..=1.0 - 1.0 / 50.0 + 1e-6).contains(&x)));
}

#[test]
fn exhaustive_enumeration_is_announced() {
    let c = Case::new();
    // C(10,5) = 252 relabelings <= 500 asked for.
    let mut args = glm_with(&["--quiet"]);
    args[9] = "500";
    let (code, err) = c.run(&args);
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.p("out/r_voxflip.json")).unwrap()).unwrap();
    assert_eq!(json["permutations"], 252);
    assert_eq!(json["exhaustive"], true);
    let (_, err) = c.run(&args[..args.len() - 1]);
    assert!(err.contains("exhaustive: all 252"), "{err}");
}

#[test]
fn mask_on_another_grid() {
    let c = Case::new();
    write(&c.p("mask2.nii.gz"), [6, 5, 3], 1, &vec![1.0; 90]);
    c.fails(&glm_with(&["-m", "mask2.nii.gz"]), "mask2.nii.gz", "does not match");
}

#[test]
fn design_rows_differ_from_volumes() {
    let c = Case::new();
    c.text("d9.mat", "/NumWaves 1\n/NumPoints 9\n/Matrix\n1\n1\n1\n1\n1\n1\n1\n1\n1\n");
    c.text("c1.con", "/NumWaves 1\n/NumContrasts 1\n/Matrix\n1\n");
    c.fails(&["-i", "in.nii.gz", "-o", "out/r", "-d", "d9.mat", "-t", "c1.con"], "d9.mat", "10 volumes");
}

#[test]
fn rank_deficient_design() {
    let c = Case::new();
    c.text(
        "rd.mat",
        "/NumWaves 3\n/NumPoints 10\n/Matrix\n1 1 0\n1 1 0\n1 1 0\n1 1 0\n1 1 0\n1 0 1\n1 0 1\n1 0 1\n1 0 1\n1 0 1\n",
    );
    c.text("c3.con", "/NumWaves 3\n/NumContrasts 1\n/Matrix\n0 1 -1\n");
    // Group B's indicator is intercept - group A: [0 1 -1] is estimable and runs (its
    // numbers against the reduced design: tests/it/rank_deficient.rs); [0 1 0] is not.
    c.text("c1.con", "/NumWaves 3\n/NumContrasts 1\n/Matrix\n0 1 0\n");
    c.fails(&["-i", "in.nii.gz", "-o", "out/r1", "-d", "rd.mat", "-t", "c1.con"], "c1.con", "is not estimable");
    let (code, err) = c.run(&["-i", "in.nii.gz", "-o", "out/r", "-d", "rd.mat", "-t", "c3.con", "-n", "20"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("rd.mat: column 3 is a linear combination of columns 1, 2 (rank 2 of 3 columns)"), "{err}");
}

#[test]
fn contrast_not_estimable_and_wrong_columns() {
    let c = Case::new();
    c.text("zero.con", "/NumWaves 2\n/NumContrasts 1\n/Matrix\n0 0\n");
    c.fails(&["-i", "in.nii.gz", "-o", "out/r", "-d", "design.mat", "-t", "zero.con"], "zero.con", "all zeros");
    c.text("three.con", "/NumWaves 3\n/NumContrasts 1\n/Matrix\n1 0 0\n");
    c.fails(&["-i", "in.nii.gz", "-o", "out/r", "-d", "design.mat", "-t", "three.con"], "three.con", "columns");
}

#[test]
fn nan_voxels_inside_the_mask() {
    let c = Case::new();
    let mut d = data(10, 1);
    d[7] = f32::NAN;
    write(&c.p("nan.nii.gz"), DIMS, 10, &d);
    c.fails(&["-i", "nan.nii.gz", "-o", "out/r", "-1", "-m", "mask.nii.gz"], "nan.nii.gz", "NaN");
    let nvox: usize = DIMS.iter().product();
    write(&c.p("const.nii.gz"), DIMS, 10, &vec![5.0; 10 * nvox]);
    c.fails(&["-i", "const.nii.gz", "-o", "out/r", "-1", "-m", "mask.nii.gz"], "const.nii.gz", "constant");
}

/// randomise's mask rule: voxels of -m constant across all images (exactly equal, here a
/// zero edge and two interior voxels, one of them 5.0 everywhere) are left out, counted on
/// stderr and in the sidecar, and hold 0 in every output map; every other voxel's
/// statistic and p values are bit for bit those of a run whose mask excludes them (the
/// oracle: the same analysis on the explicit mask). With --norcmask they are kept, with
/// statistic 0 (randomise's t where the variance is 0) and the other voxels' t unchanged.
#[test]
fn constant_voxels_leave_the_mask_as_in_randomise() {
    let c = Case::new();
    let nvox: usize = DIMS.iter().product();
    let mut d = data(10, 1);
    let mut constant = vec![false; nvox];
    for (l, k) in constant.iter_mut().enumerate() {
        *k = l % DIMS[0] == 0 || l == 15 || l == 52;
    }
    for t in 0..10 {
        for l in 0..nvox {
            if constant[l] {
                d[t * nvox + l] = if l == 52 { 5.0 } else { 0.0 };
            }
        }
    }
    let n_const = constant.iter().filter(|&&k| k).count();
    write(&c.p("const.nii.gz"), DIMS, 10, &d);
    let varying: Vec<f32> = constant.iter().map(|&k| if k { 0.0 } else { 1.0 }).collect();
    write(&c.p("varying.nii.gz"), DIMS, 1, &varying);
    let flags = ["-d", "design.mat", "-t", "design.con", "-n", "60", "-T", "-x", "--uncorrp", "--backend", "cpu"];
    let run = |mask: &str, out: &str, extra: &[&str]| {
        let mut a = vec!["-i", "const.nii.gz", "-m", mask, "-o", out];
        a.extend_from_slice(&flags);
        a.extend_from_slice(extra);
        let (code, err) = c.run(&a);
        assert_eq!(code, 0, "{err}");
        err
    };
    let err = run("mask.nii.gz", "out/dropped", &[]);
    let said: Vec<&str> = err.lines().filter(|l| l.contains("constant across all images")).collect();
    assert_eq!(said.len(), 1, "{err}");
    assert!(said[0].contains(&format!("{n_const} voxels of mask.nii.gz")), "{err}");
    run("varying.nii.gz", "out/explicit", &[]);
    run("mask.nii.gz", "out/kept", &["--norcmask"]);
    let (quiet_code, quiet_err) = c.run(&[
        "-i",
        "const.nii.gz",
        "-m",
        "mask.nii.gz",
        "-o",
        "out/quiet",
        "-1",
        "-n",
        "10",
        "--quiet",
        "--backend",
        "cpu",
    ]);
    assert_eq!(quiet_code, 0, "{quiet_err}");
    assert!(!quiet_err.contains("constant"), "{quiet_err}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.p("out/dropped_voxflip.json")).unwrap()).unwrap();
    assert_eq!(json["voxels_dropped"][0]["count"], n_const);
    assert_eq!(json["n_voxels"], nvox - n_const);
    let read = |name: &str| voxflip_io::read_image(&c.p(&format!("out/{name}.nii.gz"))).unwrap().data;
    for map in ["tstat1", "vox_p_tstat1", "vox_corrp_tstat1", "tfce_tstat1", "tfce_p_tstat1", "tfce_corrp_tstat1"] {
        let (dropped, explicit) = (read(&format!("dropped_{map}")), read(&format!("explicit_{map}")));
        for l in 0..nvox {
            assert_eq!(dropped[l].to_bits(), explicit[l].to_bits(), "{map} at voxel {l}");
            if constant[l] {
                assert_eq!(dropped[l], 0.0, "{map} at constant voxel {l}");
            }
        }
    }
    let (kept, dropped) = (read("kept_tstat1"), read("dropped_tstat1"));
    for l in 0..nvox {
        assert_eq!(kept[l].to_bits(), dropped[l].to_bits(), "--norcmask tstat1 at voxel {l}");
    }
    // A constant voxel's t is 0 in every permutation, so its uncorrected p is 1 (written 1-p = 0)
    // and it adds no TFCE: the kept run's TFCE map equals the dropped one's.
    let (kept_p, kept_tfce, dropped_tfce) =
        (read("kept_vox_p_tstat1"), read("kept_tfce_tstat1"), read("dropped_tfce_tstat1"));
    for l in 0..nvox {
        if constant[l] {
            assert_eq!(kept_p[l], 0.0, "--norcmask vox_p at constant voxel {l}");
        }
        assert_eq!(kept_tfce[l].to_bits(), dropped_tfce[l].to_bits(), "--norcmask tfce at voxel {l}");
    }
}

#[test]
fn empty_mask() {
    let c = Case::new();
    write(&c.p("empty.nii.gz"), DIMS, 1, &vec![0.0; DIMS.iter().product()]);
    c.fails(&glm_with(&["-m", "empty.nii.gz"]), "empty.nii.gz", "empty");
}

#[test]
fn unreadable_truncated_and_5d_inputs() {
    let c = Case::new();
    c.fails(&["-i", "missing.nii.gz", "-o", "out/r", "-1"], "missing.nii.gz", "");
    let bytes = std::fs::read(c.p("in.nii.gz")).unwrap();
    std::fs::write(c.p("trunc.nii.gz"), &bytes[..bytes.len() / 2]).unwrap();
    c.fails(&["-i", "trunc.nii.gz", "-o", "out/r", "-1"], "trunc.nii.gz", "");
    c.text("text.nii", "this is not an image");
    c.fails(&["-i", "text.nii", "-o", "out/r", "-1"], "text.nii", "");
    // A 5D file: patch dim[0] = 5, dim[5] = 2 in an uncompressed NIfTI-1 header.
    write(&c.p("five.nii"), DIMS, 10, &data(10, 1));
    let mut b = std::fs::read(c.p("five.nii")).unwrap();
    b[40..42].copy_from_slice(&5i16.to_le_bytes());
    b[48..50].copy_from_slice(&5i16.to_le_bytes()); // dim[4] = 5
    b[50..52].copy_from_slice(&2i16.to_le_bytes()); // dim[5] = 2
    std::fs::write(c.p("five.nii"), &b).unwrap();
    c.fails(&["-i", "five.nii", "-o", "out/r", "-1"], "five.nii", "5D");
}

#[test]
fn unknown_participants_and_missing_subject_files() {
    let c = Case::new();
    c.text("participants.tsv", "participant_id\tgroup\nsub-01\tA\nsub-02\tA\nsub-03\tB\nsub-04\tC\n");
    write(&c.p("pre4.nii.gz"), DIMS, 4, &data(4, 2));
    write(&c.p("post4.nii.gz"), DIMS, 4, &data(4, 3));
    let base = [
        "interaction",
        "--pre",
        "pre4.nii.gz",
        "--post",
        "post4.nii.gz",
        "--participants",
        "participants.tsv",
        "-o",
        "out/r",
    ];
    let mut a = base.to_vec();
    a.extend(["--groups", "A,B"]);
    c.fails(&a, "participants.tsv", "sub-04");
    c.text("p2.tsv", "participant_id\tgroup\nsub-01\tA\nsub-02\tA\nsub-03\tB\nsub-04\tB\n");
    write(&c.p("sub-01_pre.nii.gz"), DIMS, 1, &data(1, 4));
    let a = [
        "interaction",
        "--pre",
        "{participant_id}_pre.nii.gz",
        "--post",
        "post4.nii.gz",
        "--participants",
        "p2.tsv",
        "-o",
        "out/r",
    ];
    c.fails(&a, "sub-02_pre.nii.gz", "sub-02");
}

#[test]
fn interaction_from_per_subject_files_runs() {
    let c = Case::new();
    c.text("p.tsv", "participant_id\tgroup\nsub-01\tA\nsub-02\tA\nsub-03\tA\nsub-04\tB\nsub-05\tB\nsub-06\tB\n");
    for (i, id) in ["sub-01", "sub-02", "sub-03", "sub-04", "sub-05", "sub-06"].iter().enumerate() {
        write(&c.p(&format!("{id}_pre.nii.gz")), DIMS, 1, &data(1, 10 + i as u32));
        write(&c.p(&format!("{id}_post.nii.gz")), DIMS, 1, &data(1, 20 + i as u32));
    }
    let a = [
        "interaction",
        "--pre",
        "{participant_id}_pre.nii.gz",
        "--post",
        "{participant_id}_post.nii.gz",
        "--participants",
        "p.tsv",
        "-o",
        "out/r",
        "--quiet",
    ];
    let (code, err) = c.run(&a);
    assert_eq!(code, 0, "{err}");
    let outs = c.outputs();
    for k in 1..=3 {
        assert!(
            outs.contains(&format!("r_tstat{k}.nii.gz")) && outs.contains(&format!("r_vox_corrp_tstat{k}.nii.gz")),
            "{outs:?}"
        );
    }
    // 2^6 = 64 sign flips <= 5000: exhaustive.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.p("out/r_voxflip.json")).unwrap()).unwrap();
    assert_eq!(json["permutations"], 64);
    // --permute exchanges group labels for the interaction (C(6,3) = 20 relabelings), but
    // the time effect (a mean) is sign-flipped: relabeling cannot test it.
    for f in c.outputs() {
        std::fs::remove_file(c.p("out").join(f)).unwrap();
    }
    let mut permuted = a.to_vec();
    permuted.push("--permute");
    let (code, err) = c.run(&permuted);
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.p("out/r_voxflip.json")).unwrap()).unwrap();
    let kinds: Vec<(&str, u64)> = json["contrasts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["permutation_kind"].as_str().unwrap(), c["permutations"].as_u64().unwrap()))
        .collect();
    assert_eq!(kinds, vec![("permute", 20), ("permute", 20), ("sign-flip", 64)]);
}

#[test]
fn exchangeability_blocks_restrict_and_are_checked() {
    let c = Case::new();
    // Five blocks of two (one subject of each group per block): within-block exchange gives
    // 2^5 = 32 relabelings, exhaustive for -n 50; without blocks there are C(10,5) = 252.
    c.text("design.grp", "/NumWaves 1\n/NumPoints 10\n/Matrix\n1\n2\n3\n4\n5\n1\n2\n3\n4\n5\n");
    let (code, err) = c.run(&glm_with(&["-e", "design.grp", "--backend", "cpu"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("exhaustive: all 32 distinct permutations within 5 exchangeability blocks"), "{err}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.p("out/r_voxflip.json")).unwrap()).unwrap();
    assert_eq!(json["permutations"], 32);
    assert_eq!(json["exchangeability_blocks"]["count"], 5);
    assert_eq!(json["exchangeability_blocks"]["whole"], false);
    for f in c.outputs() {
        std::fs::remove_file(c.p("out").join(f)).unwrap();
    }
    // Whole blocks of two, one-sample sign flips: one sign per block, 2^5 patterns.
    c.text("pairs.grp", "1\n1\n2\n2\n3\n3\n4\n4\n5\n5\n");
    let (code, err) = c.run(&[
        "-i",
        "in.nii.gz",
        "-o",
        "out/r",
        "-1",
        "-e",
        "pairs.grp",
        "--permuteBlocks",
        "-n",
        "100",
        "--backend",
        "cpu",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("exhaustive: all 32 distinct sign flips of 5 whole exchangeability blocks"), "{err}");
    for f in c.outputs() {
        std::fs::remove_file(c.p("out").join(f)).unwrap();
    }
    c.text("grp9.grp", "1\n1\n2\n2\n3\n3\n4\n4\n5\n");
    c.fails(&glm_with(&["-e", "grp9.grp"]), "grp9.grp", "9 rows, but the input has 10 volumes");
    c.text("uneq.grp", "1\n1\n1\n2\n2\n3\n3\n4\n4\n4\n");
    c.fails(&glm_with(&["-e", "uneq.grp", "--permuteBlocks"]), "uneq.grp", "equal size");
    c.fails(&glm_with(&["--permuteBlocks"]), "--permuteBlocks", "-e design.grp");
    c.text("frac.grp", "1\n1\n1.5\n2\n2\n3\n3\n4\n4\n4\n");
    c.fails(&glm_with(&["-e", "frac.grp"]), "frac.grp", "not an integer");
}

#[test]
fn a_mean_with_covariates_is_sign_flipped_unless_told_otherwise() {
    let c = Case::new();
    // Intercept and a demeaned covariate; contrasts: the mean, then the slope.
    let age = [-4.5, 2.0, 7.5, -1.0, 3.0, -6.0, 0.5, 5.0, -3.5, -3.0];
    let rows: String = age.iter().map(|a| format!("1 {a}\n")).collect();
    c.text("cov.mat", &format!("/NumWaves 2\n/NumPoints 10\n/Matrix\n{rows}"));
    c.text("cov.con", "/NumWaves 2\n/NumContrasts 2\n/Matrix\n1 0\n0 1\n");
    let args = [
        "-i",
        "in.nii.gz",
        "-o",
        "out/r",
        "-d",
        "cov.mat",
        "-t",
        "cov.con",
        "-n",
        "200",
        "--uncorrp",
        "--backend",
        "cpu",
    ];
    // Uncorrected 1 - p of tstat1 at the voxels where t > 0.
    let positive_p = |c: &Case| -> Vec<f32> {
        let t = voxflip_io::read_image(&c.p("out/r_tstat1.nii.gz")).unwrap();
        let p = voxflip_io::read_image(&c.p("out/r_vox_p_tstat1.nii.gz")).unwrap();
        t.data.iter().zip(&p.data).filter(|(&t, _)| t > 0.0).map(|(_, &p)| p).collect()
    };
    let (code, err) = c.run(&args);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("sign flips for tstat1"), "{err}");
    assert!(err.contains("permutations for tstat2"), "{err}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.p("out/r_voxflip.json")).unwrap()).unwrap();
    let con = json["contrasts"].as_array().unwrap();
    assert_eq!(con[0]["permutation_kind"], "sign-flip");
    assert_eq!(con[1]["permutation_kind"], "permute");
    let flipped = positive_p(&c);
    assert!(flipped.len() > 10 && flipped.iter().filter(|&&p| p > 0.5).count() > flipped.len() / 4, "{flipped:?}");
    for f in c.outputs() {
        std::fs::remove_file(c.p("out").join(f)).unwrap();
    }
    // Asked for permutations, the user gets them, and this is why they are useless here: the
    // mean of the reordered residuals never changes and the observed residuals have the
    // largest RSS, so every reordering has t >= the observed t: p = 1 wherever t > 0.
    let mut forced = args.to_vec();
    forced.extend(["--perm-kind", "permute"]);
    let (code, err) = c.run(&forced);
    assert_eq!(code, 0, "{err}");
    let permuted = positive_p(&c);
    assert!(permuted.iter().all(|&p| p == 0.0), "{permuted:?}");
}

#[test]
fn randomise_flags_fonly_n_r_v_are_understood() {
    let c = Case::new();
    c.text("design.fts", "/NumWaves 1\n/NumContrasts 1\n/Matrix\n1\n");
    let (code, err) = c.run(&glm_with(&["-f", "design.fts", "--fonly", "-N", "-R", "-V", "-x", "--backend", "cpu"]));
    assert_eq!(code, 0, "{err}");
    // Only the F-test's outputs; -N writes the null as --save-null does.
    assert_eq!(
        c.outputs(),
        vec![
            "r_clusters_fstat1.tsv",
            "r_fstat1.nii.gz",
            "r_lmax_fstat1.tsv",
            "r_mean.nii.gz",
            "r_report.html",
            "r_vox_corrp_fstat1.nii.gz",
            "r_vox_corrp_fstat1.txt",
            "r_voxflip.json"
        ]
    );
    for f in c.outputs() {
        std::fs::remove_file(c.p("out").join(f)).unwrap();
    }
    c.fails(&glm_with(&["--fonly"]), "--fonly", "-f design.fts");
    // randomise features voxflip lacks are named, not met with a parser error.
    // -v is randomise's variance smoothing (tests/it/variance_smoothing.rs); a std that is
    // not a positive number of mm is refused.
    c.fails(&glm_with(&["-v", "0"]), "-v 0", "positive number of mm");
    // --vxl is understood (tests/it/voxelwise.rs): a column beyond the design's is named.
    c.fails(&glm_with(&["--vxl", "3", "--vxf", "ev.nii.gz"]), "--vxl", "has 2 column(s)");
}

#[test]
fn adapter_probing_prints_no_window_system_noise() {
    // The default backend enumerates GPU adapters; without XDG_RUNTIME_DIR the GL/Vulkan
    // window-system probes used to print "error: XDG_RUNTIME_DIR is invalid" lines.
    let c = Case::new();
    let out = Command::new(env!("CARGO_BIN_EXE_voxflip"))
        .args(glm_with(&[]))
        .current_dir(c.dir.path())
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("XDG_RUNTIME_DIR"), "{err}");
    assert!(!err.to_lowercase().lines().any(|l| l.starts_with("error")), "{err}");
}

#[test]
fn demean_models_the_mean_once() {
    let c = Case::new();
    let age = [31.0, 45.0, 28.0, 52.0, 39.0, 60.0, 24.0, 41.0, 35.0, 48.0];
    let vest = |name: &str, rows: Vec<String>| {
        let cols = rows[0].split(' ').count();
        c.text(name, &format!("/NumWaves {cols}\n/NumPoints {}\n/Matrix\n{}\n", rows.len(), rows.join("\n")));
    };
    vest("age.mat", age.iter().map(|a| format!("{a}")).collect());
    c.text("age.con", "/NumWaves 1\n/NumContrasts 1\n/Matrix\n1\n");
    vest("iage.mat", age.iter().map(|a| format!("1 {a}")).collect());
    c.text("iage.con", "/NumWaves 2\n/NumContrasts 2\n/Matrix\n0 1\n1 0\n");
    c.text("slope.con", "/NumWaves 2\n/NumContrasts 1\n/Matrix\n0 1\n");
    let tmap = |args: &[&str]| -> Vec<f32> {
        let mut all = vec!["-i", "in.nii.gz", "-o", "out/r", "-n", "20", "--quiet", "--backend", "cpu"];
        all.extend_from_slice(args);
        let (code, err) = c.run(&all);
        assert_eq!(code, 0, "{args:?}: {err}");
        let t = voxflip_io::read_image(&c.p("out/r_tstat1.nii.gz")).unwrap().data;
        for f in c.outputs() {
            std::fs::remove_file(c.p("out").join(f)).unwrap();
        }
        t
    };
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-4 * y.abs().max(1.0));
    // A design without the mean: -D adds it, so the slope's t is the one with an intercept.
    let with_intercept = tmap(&["-d", "iage.mat", "-t", "slope.con"]);
    assert!(with_intercept.iter().any(|&t| t.abs() > 0.5));
    assert!(close(&tmap(&["-d", "age.mat", "-t", "age.con", "-D"]), &with_intercept));
    assert!(!close(&tmap(&["-d", "age.mat", "-t", "age.con"]), &with_intercept));
    // Designs that model the mean already (group indicators, an intercept column) are kept.
    let groups = tmap(&["-d", "design.mat", "-t", "design.con"]);
    assert!(close(&tmap(&["-d", "design.mat", "-t", "design.con", "-D"]), &groups));
    assert!(close(&tmap(&["-d", "iage.mat", "-t", "slope.con", "-D"]), &with_intercept));
    // ... but a contrast of the mean has nothing left to test.
    c.fails(
        &["-i", "in.nii.gz", "-o", "out/r", "-d", "iage.mat", "-t", "iage.con", "-D"],
        "iage.mat",
        "contrast tstat2 tests it",
    );
}

/// Nothing a user types may panic: odd and hostile values of every numeric flag and
/// argument end in a clean run or in one line of error with exit 2, never a panic (exit
/// 101) or an abort. Among them the `--tfce_D` step that needs more TFCE levels than any
/// map may have, which once tripped an assertion.
#[test]
fn nothing_a_user_types_panics() {
    let c = Case::new();
    c.text("one.con", "/NumWaves 2\n/NumContrasts 1\n/Matrix\n0 0\n");
    c.text("bad.grp", "/NumWaves 1\n/NumPoints 10\n/Matrix\n1\n1\n2\n2\n2\n3\n3\n3\n3\n1.5\n");
    let cases: Vec<Vec<&str>> = vec![
        glm_with(&["-T", "--tfce_D", "1e-7"]),
        glm_with(&["-T", "--tfce_D", "1e-30"]),
        glm_with(&["-T", "--tfce_D", "0"]),
        glm_with(&["-T", "--tfce_D", "nan"]),
        glm_with(&["-T", "--tfce_D", "inf"]),
        glm_with(&["-T", "--tfce_H", "nan"]),
        glm_with(&["-T", "--tfce_E", "-1"]),
        glm_with(&["-T", "--tfce_E", "1e30"]),
        glm_with(&["-T", "--tfce_C", "7"]),
        glm_with(&["-T", "--tfce-exact", "--tfce_H", "0", "--tfce_E", "0"]),
        glm_with(&["-c", "nan"]),
        glm_with(&["-c", "-inf", "-C", "-1e30"]),
        glm_with(&["-C", "inf", "-c", "1e38"]),
        glm_with(&["--cluster-connectivity", "5", "-c", "1"]),
        glm_with(&["-e", "bad.grp"]),
        glm_with(&["-e", "missing.grp", "--permuteBlocks"]),
        vec!["-i", "in.nii.gz", "-o", "out/r", "-d", "design.mat", "-t", "one.con"],
        vec!["-i", "in.nii.gz", "-o", "out/r", "-1", "-n", "1"],
        vec!["-i", "in.nii.gz", "-o", "out/r", "-1", "-n", "0"],
        vec!["-i", "in.nii.gz", "-o", "out/r", "-1", "-n", "18446744073709551615", "--seed", "1"],
        vec!["-i", "in.nii.gz", "-o", "out/r", "-1", "--seed", "-1"],
        vec!["-i", "mask.nii.gz", "-o", "out/r", "-1"],
        vec!["-i", "design.mat", "-o", "out/r", "-1"],
        vec!["-i", "in.nii.gz", "-o", "", "-1"],
        vec!["-i", "in.nii.gz", "-o", "out/r", "-1", "--glm-kernel", "fast"],
        vec!["-i", "in.nii.gz", "-o", "out/r", "-1", "--backend", "cpu", "--glm-kernel", "wide"],
        vec!["simulate", "--out", "sim0", "--grid", "small", "--n-a", "0", "--n-b", "0"],
        vec!["simulate", "--out", "sim1", "--grid", "small", "--n-a", "1", "--n-b", "1"],
        vec!["simulate", "--out", "sim2", "--grid", "1mm"],
        vec!["example", "--dir", "ex", "--grid", "tiny"],
        vec!["interaction", "--pre", "in.nii.gz", "--post", "in.nii.gz", "--participants", "design.mat", "-o", "out/r"],
        vec![
            "interaction",
            "--pre",
            "{participant_id}.nii.gz",
            "--post",
            "x",
            "--participants",
            "nope.tsv",
            "-o",
            "out/r",
        ],
        vec!["bench", "-n", "0"],
        vec!["--version"],
        vec!["--help"],
        vec!["-n", "abc"],
    ];
    // The run that once panicked names the flag to change.
    let (code, err) = c.run(&glm_with(&["-T", "--tfce_D", "1e-7", "--backend", "cpu"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--tfce_D") && !err.contains("panicked"), "{err}");
    for args in cases {
        let (code, err) = c.run(&args);
        assert!(code == 0 || code == 2, "{args:?}: exit {code}: {err}");
        assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{args:?}: {err}");
        if code == 2 {
            // One error line: voxflip's, or the argument parser's.
            let lines = err.lines().filter(|l| l.starts_with("voxflip: error:") || l.starts_with("error:")).count();
            assert_eq!(lines, 1, "{args:?}: one error line expected: {err}");
        }
        for f in c.outputs() {
            let _ = std::fs::remove_file(c.p("out").join(f));
        }
    }
}
