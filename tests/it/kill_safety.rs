//! Kill tests: a run over an earlier complete run with the same prefix, stopped by SIGKILL,
//! SIGINT or SIGTERM at seeded random points (during the permutations, while writing, and
//! inside the commit's renames, which VOXFLIP_TEST_COMMIT_PAUSE_MS widens to be hit), never
//! leaves a sidecar beside files of another run, and:
//! - after SIGINT/SIGTERM, exits 130/143 (or 0 if it had finished) leaving no temporary and a
//!   complete set (the earlier run's, or its own when the signal came during the renames);
//! - after SIGKILL, the next run with the prefix (here `voxflip report`) finishes a commit
//!   the kill cut short or drops the dead run's temporaries: a complete set, no temporary.
//!
//! The oracle: each file of a set is compared byte for byte with the same file of a complete
//! uninterrupted run of the same seed (the two runs differ in seed, so their corrected p
//! maps differ, and a mix is seen).
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use voxflip_io::{header_from_affine, write_image};

const DIMS: [usize; 3] = [12, 10, 8];
const NVOL: usize = 12;

/// The run: one-sample, TFCE and voxelwise corrected maps (seconds of permutations on a
/// loaded machine, then about ten files to rename).
fn run_args(seed: &str, prefix: &str) -> Vec<String> {
    ["-i", "in.nii.gz", "-1", "-T", "-x", "-n", "3000", "--backend", "cpu", "--quiet", "--seed", seed, "-o", prefix]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Milliseconds each rename of the commit waits, so that a kill lands inside the renames.
const PAUSE_MS: &str = "40";

fn spawn(dir: &Path, args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_voxflip"))
        .args(args)
        .current_dir(dir)
        .env("XDG_RUNTIME_DIR", "/tmp")
        .env("VOXFLIP_TEST_COMMIT_PAUSE_MS", PAUSE_MS)
        .env_remove("FSLOUTPUTTYPE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// The seed of the run whose sidecar is in `dir` (None: no sidecar).
fn sidecar_seed(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("r_voxflip.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).expect("a sidecar is never torn");
    v["seed"].as_u64()
}

/// The files of a set that must equal the reference run's byte for byte (the sidecar and
/// the report carry the date and timings).
fn compared(name: &str) -> bool {
    name.starts_with("r_") && name != "r_voxflip.json" && name != "r_report.html"
}

/// Where `dir` has a sidecar, every final-named file of the set is the sidecar's run's,
/// and every file its run writes is there. Returns the seed.
fn check_set(dir: &Path, refs: &[(u64, PathBuf)], what: &str) -> Option<u64> {
    let seed = sidecar_seed(dir)?;
    let reference = &refs.iter().find(|(s, _)| *s == seed).expect("the sidecar of one of the two runs").1;
    let want: Vec<String> = names(reference).into_iter().filter(|n| n.starts_with("r_")).collect();
    let have: Vec<String> = names(dir).into_iter().filter(|n| n.starts_with("r_")).collect();
    assert_eq!(have, want, "{what}: the set of seed {seed} is incomplete");
    for n in want.iter().filter(|n| compared(n)) {
        let (a, b) = (std::fs::read(dir.join(n)).unwrap(), std::fs::read(reference.join(n)).unwrap());
        assert!(a == b, "{what}: {n} is not the file of the run whose sidecar is there (seed {seed})");
    }
    Some(seed)
}

fn temporaries(dir: &Path) -> Vec<String> {
    names(dir).into_iter().filter(|n| n.starts_with(".voxflip-")).collect()
}

/// Copy the reference set in `from` into the empty `to`.
fn restore(from: &Path, to: &Path) {
    for n in names(to) {
        std::fs::remove_file(to.join(n)).unwrap();
    }
    for n in names(from) {
        std::fs::copy(from.join(&n), to.join(&n)).unwrap();
    }
}

/// A small deterministic generator for the delays (the test repeats exactly).
struct Lcg(u64);

impl Lcg {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn send(child: &Child, sig: i32) {
    // SAFETY: sends a signal to our own child, which has not been reaped yet.
    let r = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(r, 0);
}

#[test]
fn kills_at_random_points_never_leave_a_mixed_set_or_temporaries() {
    let d = voxflip_testkit::tempdir().unwrap();
    let nvox: usize = DIMS.iter().product();
    let data: Vec<f32> =
        (0..NVOL * nvox).map(|k| ((k as u32).wrapping_mul(2654435761) >> 8) as f32 % 1000.0 / 1000.0 - 0.35).collect();
    let h = header_from_affine(DIMS, [2.0; 3], [[2.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]], 4);
    write_image(&d.path().join("in.nii.gz"), &h, DIMS, NVOL, &data).unwrap();
    // The two complete runs, A (seed 1, the earlier one) and B (seed 2, the one killed).
    let mut refs = Vec::new();
    let mut b_seconds = 0.0;
    for (seed, sub) in [(1u64, "a"), (2, "b")] {
        std::fs::create_dir(d.path().join(sub)).unwrap();
        let t = Instant::now();
        let out = spawn(d.path(), &run_args(&seed.to_string(), &format!("{sub}/r"))).wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        b_seconds = t.elapsed().as_secs_f64();
        refs.push((seed, d.path().join(sub)));
    }
    let run = d.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let killed = run_args("2", "run/r");
    let mut rng = Lcg(10);
    // SIGKILL 7 times, SIGINT 4, SIGTERM 2: each at a random point of B's duration.
    let signals = [9, 9, 9, 9, 9, 9, 9, 2, 2, 2, 2, 15, 15];
    let mut kept_earlier = 0;
    for (trial, &sig) in signals.iter().enumerate() {
        restore(&refs[0].1, &run);
        let delay = Duration::from_secs_f64(b_seconds * (0.05 + 1.0 * rng.unit()));
        let what = format!("trial {trial}: signal {sig} after {delay:?}");
        let child = spawn(d.path(), &killed);
        std::thread::sleep(delay);
        send(&child, sig);
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{what}: {err}");
        let after_kill = check_set(&run, &refs, &what);
        if sig == 9 {
            // The next run with the prefix cleans up after the dead one.
            let next = Command::new(env!("CARGO_BIN_EXE_voxflip"))
                .args(["report", "run/r", "-o", "report.html", "--quiet"])
                .current_dir(d.path())
                .output()
                .unwrap();
            assert!(next.status.success(), "{what}: {}", String::from_utf8_lossy(&next.stderr));
            let seed = check_set(&run, &refs, &format!("{what}, after the next run"));
            assert!(seed.is_some(), "{what}: no complete set after the next run: {:?}", names(&run));
            kept_earlier += usize::from(seed == Some(1));
        } else {
            let code = out.status.code();
            let want = if sig == 2 { 130 } else { 143 };
            assert!(code == Some(want) || code == Some(0), "{what}: exit {code:?}: {err}");
            assert!(after_kill.is_some(), "{what}: an interrupt left no complete set: {:?}", names(&run));
        }
        assert!(temporaries(&run).is_empty(), "{what}: temporaries left: {:?}", temporaries(&run));
    }
    // The delays reached the permutations (the earlier set kept) at least once.
    assert!(kept_earlier > 0, "no kill landed before the commit (B took {b_seconds:.2} s)");
}
