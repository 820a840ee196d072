//! Inputs and outputs as users' files and machines make them: FSL image names without
//! extension, FSLOUTPUTTYPE, headers a fuzzer garbled, `-o dir/`, `-f` without `-t`, and a
//! mask in another orientation. Each refusal is one line naming the file (or flag) and the
//! problem, exit 2, and no output.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use voxflip_io::{header_from_affine, write_image};

const DIMS: [usize; 3] = [5, 4, 3];
const NVOX: usize = 60;
const AFFINE: [[f64; 4]; 3] = [[-2.0, 0.0, 0.0, 10.0], [0.0, 2.0, 0.0, -8.0], [0.0, 0.0, 2.0, -4.0]];

struct Case {
    dir: voxflip_testkit::TempDir,
}

impl Case {
    /// in.nii.gz (8 volumes of shifted noise), mask.nii.gz (all ones), design files, out/.
    fn new() -> Case {
        let c = Case { dir: voxflip_testkit::tempdir().unwrap() };
        let data: Vec<f32> =
            (0..8 * NVOX).map(|k| ((k as u32).wrapping_mul(2654435761) >> 8) as f32 % 1000.0 / 1000.0 - 0.3).collect();
        c.image("in.nii.gz", 8, &data, AFFINE);
        c.image("mask.nii.gz", 1, &[1.0; NVOX], AFFINE);
        std::fs::write(c.p("design.mat"), "/NumWaves 1\n/NumPoints 8\n/Matrix\n1\n1\n1\n1\n1\n1\n1\n1\n").unwrap();
        std::fs::write(c.p("design.con"), "/NumWaves 1\n/NumContrasts 1\n/Matrix\n1\n").unwrap();
        std::fs::create_dir(c.p("out")).unwrap();
        c
    }
    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn image(&self, name: &str, nvol: usize, data: &[f32], affine: [[f64; 4]; 3]) {
        write_image(&self.p(name), &header_from_affine(DIMS, [2.0; 3], affine, 4), DIMS, nvol, data).unwrap();
    }
    fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_voxflip"));
        cmd.args(args).current_dir(self.dir.path()).env("XDG_RUNTIME_DIR", "/tmp").env_remove("FSLOUTPUTTYPE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }
    fn files(&self, dir: &str) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(self.p(dir)).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        v.sort();
        v
    }
    /// A clean refusal: exit 2, one line with every one of `words`, nothing in out/.
    fn refused(&self, args: &[&str], env: &[(&str, &str)], words: &[&str]) -> String {
        let o = self.run_env(args, env);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line expected: {err}");
        for w in words {
            assert!(err.contains(w), "{args:?}: the message should say '{w}': {err}");
        }
        assert!(self.files("out").is_empty(), "{args:?}: no outputs expected: {:?}", self.files("out"));
        err
    }
}

const RUN: [&str; 8] = ["-1", "-n", "20", "--backend", "cpu", "-o", "out/r", "--quiet"];

fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    extra.iter().copied().chain(RUN).collect()
}

fn sidecar(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `-i in -m mask` read in.nii.gz and mask.nii.gz, and the sidecar records the files read;
/// a name that means two files, or none, is refused saying which were tried.
#[test]
fn image_names_without_extension_resolve_as_fsl_resolves_them() {
    let c = Case::new();
    let o = c.run_env(&args(&["-i", "in", "-m", "mask"]), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = sidecar(&c.p("out/r_voxflip.json"));
    assert_eq!(s["input"], "in.nii.gz");
    assert_eq!(s["mask"], "mask.nii.gz");
    // The same t map as with the full names (the oracle: the same files were read).
    let with_ext = c.p("full");
    std::fs::create_dir(&with_ext).unwrap();
    let o =
        c.run_env(&["-i", "in.nii.gz", "-m", "mask.nii.gz", "-1", "-n", "20", "--backend", "cpu", "-o", "full/r"], &[]);
    assert!(o.status.success());
    assert_eq!(std::fs::read(c.p("out/r_tstat1.nii.gz")).unwrap(), std::fs::read(c.p("full/r_tstat1.nii.gz")).unwrap());
    for f in c.files("out") {
        std::fs::remove_file(c.p("out").join(f)).unwrap();
    }
    c.refused(&args(&["-i", "nope"]), &[], &["nope: no such image (tried nope, nope.nii.gz, nope.nii)"]);
    c.image("mask.nii", 1, &[1.0; NVOX], AFFINE);
    c.refused(&args(&["-i", "in", "-m", "mask"]), &[], &["mask: ambiguous", "mask.nii.gz", "mask.nii "]);
}

/// FSLOUTPUTTYPE=NIFTI writes uncompressed .nii maps, every one the sidecar lists and
/// nothing else; `voxflip report` finds them even beside an earlier .nii.gz run's maps; the
/// types voxflip cannot write are refused before any work.
#[test]
fn fsloutputtype_sets_the_extension_of_every_map() {
    let c = Case::new();
    let run = args(&["-i", "in.nii.gz", "-x", "--uncorrp"]);
    assert!(c.run_env(&run, &[]).status.success());
    let gz = c.files("out");
    assert!(gz.contains(&"r_tstat1.nii.gz".to_string()), "{gz:?}");
    let o = c.run_env(&run, &[("FSLOUTPUTTYPE", "NIFTI")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = sidecar(&c.p("out/r_voxflip.json"));
    let listed: Vec<String> = s["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Path::new(p.as_str().unwrap()).file_name().unwrap().to_string_lossy().into())
        .collect();
    let nii: Vec<&String> = listed.iter().filter(|n| n.ends_with(".nii")).collect();
    assert_eq!(nii.len(), 4, "tstat, vox_p, vox_corrp, mean: {listed:?}");
    assert!(!listed.iter().any(|n| n.ends_with(".gz")), "{listed:?}");
    for n in &listed {
        assert!(c.p("out").join(n).exists(), "{n} is listed but missing");
    }
    for n in nii {
        let bytes = std::fs::read(c.p("out").join(n)).unwrap();
        // Uncompressed NIfTI-1: sizeof_hdr 348 first, no gzip magic; and it reads back.
        assert_eq!(&bytes[..4], &348i32.to_le_bytes(), "{n}");
        assert_eq!(voxflip_io::read_image(&c.p("out").join(n)).unwrap().dims, DIMS);
    }
    // The .nii maps equal the .nii.gz ones (same run, same seed).
    let a = voxflip_io::read_image(&c.p("out/r_vox_corrp_tstat1.nii")).unwrap();
    let b = voxflip_io::read_image(&c.p("out/r_vox_corrp_tstat1.nii.gz")).unwrap();
    assert_eq!(a.data, b.data);
    let o = c.run_env(&["report", "out/r", "-o", "rep.html"], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in c.files("out") {
        std::fs::remove_file(c.p("out").join(f)).unwrap();
    }
    for t in ["NIFTI2", "NIFTI2_GZ", "ANALYZE", "NIFTI_PAIR", "bogus"] {
        c.refused(&run, &[("FSLOUTPUTTYPE", t)], &[&format!("FSLOUTPUTTYPE={t}: ")]);
    }
}

/// Headers the test garbles itself (one field each, at its offset in NIfTI-1's layout) are
/// refused naming the file and the field, whether they are the data or the mask.
#[test]
fn garbled_headers_are_refused_naming_file_and_field() {
    let c = Case::new();
    let good = c.p("in.nii");
    let data = voxflip_io::read_image(&c.p("in.nii.gz")).unwrap();
    write_image(&good, &data.header, DIMS, 8, &data.data).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let cases: [(&str, usize, Vec<u8>, &str); 4] = [
        ("slope.nii", 112, f32::INFINITY.to_le_bytes().to_vec(), "scl_slope"),
        ("inter.nii", 116, f32::NAN.to_le_bytes().to_vec(), "scl_inter"),
        ("qform.nii", 252, 300i16.to_le_bytes().to_vec(), "qform_code"),
        ("sform.nii", 254, (-3i16).to_le_bytes().to_vec(), "sform_code"),
    ];
    for (name, at, field, what) in cases {
        let mut b = bytes.clone();
        b[at..at + field.len()].copy_from_slice(&field);
        std::fs::write(c.p(name), &b).unwrap();
        c.refused(&args(&["-i", name]), &[], &[name, what]);
        c.refused(&args(&["-i", "in.nii.gz", "-m", name]), &[], &[name, what]);
    }
}

/// `-o dir/` (or a directory) is refused with a hint, for every command that takes -o.
#[test]
fn output_prefix_that_is_a_directory_is_refused_with_a_hint() {
    let c = Case::new();
    for o in ["out/", "out"] {
        let glm = ["-i", "in.nii.gz", "-1", "-o", o];
        c.refused(&glm, &[], &[&format!("-o {o}: a directory"), "-o out/run1"]);
        let inter = ["interaction", "--pre", "in.nii.gz", "--post", "in.nii.gz", "--participants", "p.tsv", "-o", o];
        c.refused(&inter, &[], &[&format!("-o {o}: a directory"), "-o out/run1"]);
        c.refused(&["report", "some", "-o", o], &[], &[&format!("-o {o}: a directory"), "-o out/report.html"]);
    }
    // merge: its -o is the prefix of the outputs, checked like the analysis's.
    assert!(c.run_env(&args(&["-i", "in.nii.gz", "--keep-null-state"]), &[]).status.success());
    let before = c.files("out");
    let o = c.run_env(&["merge", "out/r", "-o", "out/"], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.code() == Some(2) && err.contains("-o out/: a directory") && err.trim().lines().count() == 1,
        "{err}"
    );
    assert_eq!(c.files("out"), before);
}

/// `-f` needs the t contrasts of `-t`: with `-1` alone (or PALM's `-fdr`, read as `-f dr`)
/// it is refused, and a -f file that does not exist is refused before the data are read.
#[test]
fn f_tests_without_t_contrasts_or_file_are_refused() {
    let c = Case::new();
    c.refused(&args(&["-i", "in.nii.gz", "-f", "design.fts"]), &[], &["-f design.fts", "-t design.con"]);
    c.refused(&args(&["-i", "in.nii.gz", "-fdr"]), &[], &["-f dr", "-fdr"]);
    // A missing input too: the -f check comes first, before any image is read.
    let e = c.refused(
        &args(&["-i", "missing.nii.gz", "-d", "design.mat", "-t", "design.con", "-f", "nope.fts"]),
        &[],
        &["nope.fts: no such file (-f)"],
    );
    assert!(!e.contains("missing.nii.gz"), "{e}");
}

/// A mask with the data's shape but another orientation: the message shows both affines.
#[test]
fn mask_in_another_orientation_shows_both_affines() {
    let c = Case::new();
    let mut flipped = AFFINE;
    flipped[0] = [2.0, 0.0, 0.0, -10.0];
    c.image("lpi.nii.gz", 1, &[1.0; NVOX], flipped);
    c.refused(
        &args(&["-i", "in.nii.gz", "-m", "lpi.nii.gz"]),
        &[],
        &[
            "lpi.nii.gz: mask has the data's shape 5x4x3 but another orientation",
            "mask affine [2 0 0 -10; 0 2 0 -8; 0 0 2 -4]",
            "data affine [-2 0 0 10; 0 2 0 -8; 0 0 2 -4]",
        ],
    );
}
