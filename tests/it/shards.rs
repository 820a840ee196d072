//! Shards, merge and resume: a run split with --shard K/N and merged, or killed and resumed,
//! writes exactly the files one uninterrupted run writes (the sidecar apart from timings
//! and the shard list); merging a set with a shard missing, twice or from another run fails
//! in one line naming the file.
use crate::common::gpu_usable;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use voxflip_io::{header_from_affine, write_image};

const DIMS: [usize; 3] = [10, 9, 8];
/// The two-group design of [`Study`] on its data, into out/r: the first words of most runs.
const TWO_GROUPS: [&str; 8] = ["-i", "in.nii.gz", "-o", "out/r", "-d", "design.mat", "-t", "design.con"];
const N: usize = 12;

/// A dataset with a blob of effect in two groups, a design with t and F contrasts, a
/// one-sample design and exchangeability blocks, in a fresh directory.
struct Study {
    dir: voxflip_testkit::TempDir,
}

fn hash(k: u32) -> f32 {
    let h = k.wrapping_mul(2654435761).rotate_left(13).wrapping_mul(40503);
    ((h >> 8) % 10_000) as f32 / 10_000.0 - 0.5
}

impl Study {
    fn new() -> Study {
        let s = Study { dir: voxflip_testkit::tempdir().unwrap() };
        let nvox: usize = DIMS.iter().product();
        let mut y = vec![0f32; N * nvox];
        for i in 0..N {
            for z in 0..DIMS[2] {
                for yy in 0..DIMS[1] {
                    for x in 0..DIMS[0] {
                        let v = x + DIMS[0] * (yy + DIMS[1] * z);
                        let d2 = (x as f32 - 3.0).powi(2) + (yy as f32 - 4.0).powi(2) + (z as f32 - 4.0).powi(2);
                        let effect = if i < N / 2 { 1.2 * (-d2 / 6.0).exp() } else { 0.0 };
                        y[i * nvox + v] = 0.3 + effect + hash((i * nvox + v) as u32);
                    }
                }
            }
        }
        let h = header_from_affine(
            DIMS,
            [2.0; 3],
            [[-2.0, 0.0, 0.0, 10.0], [0.0, 2.0, 0.0, -8.0], [0.0, 0.0, 2.0, -4.0]],
            4,
        );
        write_image(&s.p("in.nii.gz"), &h, DIMS, N, &y).unwrap();
        let rows: String = (0..N).map(|i| if i < N / 2 { "1 0\n" } else { "0 1\n" }).collect();
        s.text("design.mat", &format!("/NumWaves 2\n/NumPoints {N}\n/Matrix\n{rows}"));
        s.text("design.con", "/NumWaves 2\n/NumContrasts 2\n/Matrix\n1 -1\n-1 1\n");
        s.text("design.fts", "/NumWaves 2\n/NumContrasts 1\n/Matrix\n1 1\n");
        // Blocks of 4 rows, each holding both groups (so that within-block permutations
        // still exchange groups).
        let grp: String = (0..N).map(|i| format!("{}\n", 1 + (i % (N / 2)) / 2)).collect();
        s.text("design.grp", &format!("/NumWaves 1\n/NumPoints {N}\n/Matrix\n{grp}"));
        std::fs::create_dir(s.p("out")).unwrap();
        s
    }
    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn text(&self, name: &str, s: &str) {
        std::fs::write(self.p(name), s).unwrap();
    }
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_voxflip"));
        c.args(args).current_dir(self.dir.path()).env("XDG_RUNTIME_DIR", "/tmp");
        c
    }
    /// Run voxflip; returns exit code and stderr.
    fn run(&self, args: &[&str]) -> (i32, String) {
        let out = self.command(args).output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).to_string())
    }
    fn ok(&self, args: &[&str]) -> String {
        let (code, err) = self.run(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        err
    }
    /// The files of out/ named r_* (outputs, not shards or checkpoints), by name.
    fn outputs(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.p("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("r_") && !n.contains("_shard-") && !n.contains("checkpoint"))
            .collect();
        v.sort();
        v
    }
    /// Move the outputs of out/ into `dir` (to compare them with a later run's).
    fn keep_outputs(&self, dir: &str) {
        std::fs::create_dir(self.p(dir)).unwrap();
        for n in self.outputs() {
            std::fs::rename(self.p("out").join(&n), self.p(dir).join(&n)).unwrap();
        }
    }
    fn clear_out(&self) {
        std::fs::remove_dir_all(self.p("out")).unwrap();
        std::fs::create_dir(self.p("out")).unwrap();
    }
    /// The outputs in out/ equal those kept in `dir`: every map and table byte for byte,
    /// the sidecar apart from timings and the shard list.
    fn same_as(&self, dir: &str, what: &str) {
        let (a, b) = (list(&self.p(dir)), self.outputs());
        assert_eq!(a, b, "{what}: the same files");
        assert!(a.len() > 3, "{what}: outputs expected, found {a:?}");
        for n in &a {
            let (x, y) = (std::fs::read(self.p(dir).join(n)).unwrap(), std::fs::read(self.p("out").join(n)).unwrap());
            if n.ends_with("_report.html") {
                // The report shows the run's date and timings; its rebuild from the same
                // files is tested in `report`.
                continue;
            } else if n.ends_with(".json") {
                assert_eq!(sidecar_sans_timings(&x), sidecar_sans_timings(&y), "{what}: {n}");
            } else {
                assert!(x == y, "{what}: {n} differs");
            }
        }
    }
}

fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// The sidecar without what may differ between a single run and its shards merged (or
/// resumed).
fn sidecar_sans_timings(bytes: &[u8]) -> serde_json::Value {
    let mut j: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    let o = j.as_object_mut().unwrap();
    o.remove("seconds_total");
    o.remove("timings");
    o.remove("date");
    o.remove("shards");
    // A resumed run records that it was (the command line it was given); nothing else.
    o["command_line"].as_array_mut().unwrap().retain(|a| a != "--resume");
    for c in o["contrasts"].as_array_mut().unwrap() {
        let c = c.as_object_mut().unwrap();
        c.remove("seconds");
        c.remove("gflops");
    }
    j
}

/// The analyses the shard tests split: t and F, TFCE, cluster extent and mass, random and
/// exhaustive sets, with and without exchangeability blocks.
fn analyses() -> Vec<(&'static str, Vec<&'static str>)> {
    let two = [&TWO_GROUPS[..], &["--backend", "cpu"]].concat();
    let with = |extra: &[&'static str]| -> Vec<&'static str> { two.iter().chain(extra).copied().collect() };
    vec![
        (
            "t and F, TFCE and clusters, random",
            with(&[
                "-f",
                "design.fts",
                "-n",
                "150",
                "-T",
                "-c",
                "1.5",
                "-C",
                "1.5",
                "-F",
                "2",
                "-S",
                "2",
                "-x",
                "--uncorrp",
            ]),
        ),
        (
            "one-sample, exhaustive sign flips",
            vec!["-i", "in.nii.gz", "-o", "out/r", "-1", "-n", "0", "-T", "-c", "2", "-x", "--backend", "cpu"],
        ),
        ("exchangeability blocks, random", with(&["-e", "design.grp", "-n", "120", "-x", "-c", "1.5", "--uncorrp"])),
    ]
}

#[test]
fn shards_merge_into_the_single_run_bit_for_bit() {
    let s = Study::new();
    for (what, args) in analyses() {
        s.ok(&[&args[..], &["--quiet"]].concat());
        s.keep_outputs("single");
        // One-sample exhaustive: 4096 sign flips; 7 shards there too.
        for count in [1, 2, 3, 7] {
            if what.starts_with("exchangeability") && count != 3 {
                continue;
            }
            for k in 1..=count {
                let shard = format!("{k}/{count}");
                s.ok(&[&args[..], &["--quiet", "--shard", &shard]].concat());
            }
            assert!(s.outputs().is_empty(), "{what}: a shard writes no maps");
            s.ok(&["merge", "out/r", "--quiet"]);
            s.same_as("single", &format!("{what}, {count} shards"));
            s.clear_out();
        }
        std::fs::remove_dir_all(s.p("single")).unwrap();
    }
}

#[test]
fn gpu_shards_merge_into_the_gpu_single_run() {
    if !gpu_usable(module_path!()) {
        return;
    }
    let s = Study::new();
    let args = [
        &TWO_GROUPS[..],
        &["-n", "130", "-T", "-c", "1.5", "-x", "--backend", "gpu", "--spatial-backend", "gpu", "--quiet"],
    ]
    .concat();
    s.ok(&args);
    s.keep_outputs("single");
    for k in 1..=3 {
        s.ok(&[&args[..], &["--shard", &format!("{k}/3")]].concat());
    }
    s.ok(&["merge", "out/r", "--quiet"]);
    s.same_as("single", "GPU engine, 3 shards");
}

/// Expect a one-line failure naming `file` and saying `words`, and no outputs.
fn merge_fails(s: &Study, args: &[&str], file: &str, words: &str) {
    let (code, err) = s.run(args);
    assert_eq!(code, 2, "{args:?}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected: {err}");
    assert!(lines[0].contains(file) && lines[0].contains(words), "should name {file} and say '{words}': {err}");
    assert!(s.outputs().is_empty(), "no outputs expected: {:?}", s.outputs());
}

#[test]
fn merging_a_missing_duplicated_or_foreign_shard_fails_in_one_line() {
    let s = Study::new();
    let args =
        ["-i", "in.nii.gz", "-d", "design.mat", "-t", "design.con", "-n", "60", "-T", "--quiet", "--backend", "cpu"];
    for k in 1..=3 {
        s.ok(&[&args[..], &["-o", "out/r", "--shard", &format!("{k}/3")]].concat());
    }
    // Another run's shard 3 (another seed) beside them.
    s.ok(&[&args[..], &["--seed", "5", "-o", "out/other", "--shard", "3/3"]].concat());
    merge_fails(&s, &["merge", "out/r", "out/r_shard-1-of-3", "out/r_shard-2-of-3"], "out/r_shard-3-of-3", "missing");
    merge_fails(
        &s,
        &["merge", "out/r", "out/r_shard-1-of-3", "out/r_shard-2-of-3", "out/r_shard-2-of-3"],
        "out/r_shard-2-of-3",
        "again",
    );
    merge_fails(
        &s,
        &["merge", "out/r", "out/r_shard-1-of-3", "out/r_shard-2-of-3", "out/other_shard-3-of-3"],
        "out/other_shard-3-of-3",
        "another run",
    );
    let mut bytes = std::fs::read(s.p("out/r_shard-2-of-3")).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(s.p("out/r_shard-2-of-3"), &bytes).unwrap();
    merge_fails(&s, &["merge", "out/r"], "out/r_shard-2-of-3", "truncated or damaged");
    s.ok(&[&args[..], &["-o", "out/r", "--shard", "2/3"]].concat());
    // The inputs changed since the shards ran: refused, not merged into wrong answers.
    s.text("design.con", "/NumWaves 2\n/NumContrasts 2\n/Matrix\n1 -1\n-1 2\n");
    merge_fails(&s, &["merge", "out/r"], "out/r_shard-1-of-3", "other inputs or options");
    merge_fails(&s, &["merge", "out/nothing"], "out/nothing_shard-K-of-N", "no shard files");
}

#[test]
fn a_kept_null_state_rewrites_the_outputs_with_other_output_options() {
    let s = Study::new();
    let args = [&TWO_GROUPS[..], &["-n", "80", "-T", "-x", "--quiet"]].concat();
    s.ok(&[&args[..], &["--backend", "cpu", "--logp", "--uncorrp"]].concat());
    s.keep_outputs("logp");
    s.ok(&[&args[..], &["--backend", "cpu", "--keep-null-state"]].concat());
    assert!(s.p("out/r_shard-1-of-1").exists());
    // Rewritten as -log10 p with uncorrected maps, without permutations: as the run that
    // asked for them, apart from the command line the sidecar records (the first run's).
    for n in s.outputs() {
        std::fs::remove_file(s.p("out").join(n)).unwrap();
    }
    s.ok(&["merge", "out/r", "--logp", "--uncorrp", "--quiet"]);
    for n in list(&s.p("logp")) {
        // The sidecar and the report record the command line and timings.
        if !n.ends_with(".json") && !n.ends_with("_report.html") {
            let a = std::fs::read(s.p("logp").join(&n)).unwrap();
            assert!(a == std::fs::read(s.p("out").join(&n)).unwrap(), "{n} differs");
        }
    }
}

/// A run killed (SIGKILL) at `delay` and resumed with --resume gives the uninterrupted
/// run's outputs. Returns whether a checkpoint was there to resume from.
fn kill_and_resume(s: &Study, args: &[&str], delay: std::time::Duration) -> bool {
    let mut child = s.command(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(delay);
    let _ = child.kill();
    let _ = child.wait();
    let resumable = std::fs::read_dir(s.p("out")).unwrap().any(|e| {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        n.ends_with("checkpoint")
    });
    s.ok(&[args, &["--resume"]].concat());
    resumable
}

#[test]
fn a_killed_run_resumes_to_the_uninterrupted_outputs() {
    let s = Study::new();
    let args = [
        &TWO_GROUPS[..],
        &[
            "-f",
            "design.fts",
            "-n",
            "900",
            "-T",
            "-c",
            "1.5",
            "-C",
            "1.5",
            "-x",
            "--uncorrp",
            "--backend",
            "cpu",
            "--quiet",
            "--checkpoint-seconds",
            "0",
            "--checkpoint-permutations",
            "40",
        ],
    ]
    .concat();
    let t0 = std::time::Instant::now();
    s.ok(&args);
    let whole = t0.elapsed();
    s.keep_outputs("single");
    s.clear_out();
    // Kill points spread over the run (fixed fractions: the test is repeatable up to the
    // machine's speed), from before the first checkpoint to the writing of the outputs.
    let mut resumed_some = false;
    for frac in [0.05, 0.3, 0.55, 0.8, 0.97] {
        let delay = whole.mul_f64(frac);
        resumed_some |= kill_and_resume(&s, &args, delay);
        s.same_as("single", &format!("killed at {frac} of the run and resumed"));
        assert!(!s.p("out/r_checkpoint").exists(), "the checkpoint is removed once the outputs are written");
        s.clear_out();
    }
    assert!(resumed_some, "no kill point found a checkpoint: the test did not test resuming");
    // A shard killed and resumed, merged with the others: the single run again.
    for k in 1..=2 {
        let shard = format!("{k}/2");
        let sa = [&args[..], &["--shard", &shard]].concat();
        if k == 1 {
            kill_and_resume(&s, &sa, whole.mul_f64(0.25));
        } else {
            s.ok(&sa);
        }
    }
    // Resuming a shard that is complete does no work.
    let err = s.ok(&[&args[..], &["--shard", "2/2", "--resume"]]
        .concat()
        .iter()
        .filter(|&&a| a != "--quiet")
        .copied()
        .collect::<Vec<_>>());
    assert!(err.contains("already complete"), "{err}");
    s.ok(&["merge", "out/r", "--quiet"]);
    s.same_as("single", "a killed and resumed shard, merged");
}

#[test]
fn a_checkpoint_of_another_run_is_not_resumed() {
    let s = Study::new();
    let args = [&TWO_GROUPS[..], &["-n", "60", "--backend", "cpu"]].concat();
    // Write a (complete-looking) checkpoint by running a shard with another seed and
    // putting its state where the checkpoint goes.
    s.ok(&[&args[..], &["--seed", "3", "--shard", "1/1", "--quiet"]].concat());
    std::fs::rename(s.p("out/r_shard-1-of-1"), s.p("out/r_checkpoint")).unwrap();
    let (code, err) = s.run(&[&args[..], &["--resume", "--quiet"]].concat());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("out/r_checkpoint") && err.contains("another run"), "{err}");
    assert!(s.outputs().is_empty());
}
