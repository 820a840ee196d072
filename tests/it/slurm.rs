//! `voxflip slurm`: the scripts it writes, run by bash as SLURM would run them, and a real
//! one-node SLURM (started by .ci/slurm/start.sh in CI) running the array and the merge;
//! both give the single run's outputs byte for byte.
use crate::common::{skipped, voxflip, SIMULATED_INTERACTION};
use std::path::Path;
use std::process::Command;

/// The run's flags after the simulated study's inputs (SIMULATED_INTERACTION).
const RUN: [&str; 9] = ["-n", "240", "-T", "-c", "2.5", "--backend", "cpu", "--seed", "3"];

fn ok(out: std::process::Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what}: {err}");
    err
}

fn with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    SIMULATED_INTERACTION.iter().chain(&RUN).chain(extra).copied().collect()
}

/// Every map and table of prefix `a` equals `b`'s (the sidecars differ in timings).
fn same_outputs(dir: &Path, a: &str, b: &str) {
    let names: Vec<String> = std::fs::read_dir(dir.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{a}_")) && (n.ends_with(".nii.gz") || n.ends_with(".tsv")))
        .collect();
    assert!(names.len() > 5, "outputs of {a}: {names:?}");
    for n in names {
        let other = format!("{b}{}", &n[a.len()..]);
        let (x, y) = (std::fs::read(dir.join("out").join(&n)).unwrap(), std::fs::read(dir.join("out").join(&other)));
        assert!(y.as_ref().is_ok_and(|y| *y == x), "{other} differs from {n}");
    }
}

#[test]
fn slurm_scripts_run_by_bash_give_the_single_run() {
    let tmp = voxflip_testkit::tempdir().unwrap();
    let d = tmp.path();
    voxflip(d, &["simulate", "--out", "data", "--grid", "small"]);
    std::fs::create_dir(d.join("out")).unwrap();
    ok(voxflip(d, &with(&["-o", "out/single", "--quiet"])), "single run");
    // --dry-run prints the scripts with the resources passed through, and writes nothing.
    let dry = voxflip(
        d,
        &[
            &[
                "slurm",
                "--dry-run",
                "--shards",
                "3",
                "--partition",
                "gpu",
                "--gres",
                "gpu:1",
                "--time",
                "1:00:00",
                "--",
            ][..],
            &with(&["-o", "out/r"]),
        ]
        .concat(),
    );
    let text = String::from_utf8_lossy(&dry.stdout).into_owned();
    ok(dry, "dry run");
    for want in [
        "#SBATCH --array=1-3",
        "#SBATCH --partition=gpu",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --time=1:00:00",
        "--shard \"${SLURM_ARRAY_TASK_ID}/3\"",
        " merge out/r",
    ] {
        assert!(text.contains(want), "dry run should contain {want}:\n{text}");
    }
    assert!(!d.join("out/r_slurm").exists(), "a dry run writes nothing");
    // Written, then run by bash as SLURM would (the #SBATCH lines are comments there).
    ok(voxflip(d, &[&["slurm", "--shards", "3", "--"][..], &with(&["-o", "out/r", "--quiet"])].concat()), "scripts");
    let bash = |script: &str, task: Option<usize>| {
        let mut c = Command::new("bash");
        c.arg(d.join("out/r_slurm").join(script)).env("XDG_RUNTIME_DIR", "/tmp");
        if let Some(k) = task {
            c.env("SLURM_ARRAY_TASK_ID", k.to_string());
        }
        c.output().unwrap()
    };
    for k in [1, 3] {
        ok(bash("shards.sh", Some(k)), "shard");
    }
    // Shard 2 is missing: the merge names it and says how to rerun it.
    let m = bash("merge.sh", None);
    assert!(!m.status.success());
    let err = String::from_utf8_lossy(&m.stderr);
    assert!(err.contains("out/r_shard-2-of-3") && err.contains("--rerun-missing"), "{err}");
    // --rerun-missing writes an array of just the missing shard.
    ok(
        voxflip(
            d,
            &[&["slurm", "--rerun-missing", "--shards", "3", "--"][..], &with(&["-o", "out/r", "--quiet"])].concat(),
        ),
        "rerun",
    );
    let shards = std::fs::read_to_string(d.join("out/r_slurm/shards.sh")).unwrap();
    assert!(shards.contains("#SBATCH --array=2\n"), "{shards}");
    ok(bash("shards.sh", Some(2)), "shard 2");
    ok(bash("merge.sh", None), "merge");
    same_outputs(d, "single", "r");
    // A bad analysis is refused in one line before anything is written.
    let bad = voxflip(
        d,
        &[
            "slurm",
            "--",
            "interaction",
            "--pre",
            "x",
            "--post",
            "y",
            "--participants",
            "z",
            "--shard",
            "1/2",
            "-o",
            "out/b",
        ],
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(err.trim().lines().count() == 1 && err.contains("--shard"), "{err}");
}

/// Whether `sbatch` is on the PATH; with VOXFLIP_REQUIRE_SLURM=1 (CI) it must be.
fn slurm_usable(what: &str) -> bool {
    let found = Command::new("sinfo").arg("-h").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("VOXFLIP_REQUIRE_SLURM").as_deref() != Ok("1"),
            "VOXFLIP_REQUIRE_SLURM=1 but no SLURM answers (start one with .ci/slurm/start.sh)"
        );
        skipped(what, "no SLURM here (.ci/slurm/start.sh starts a one-node one)");
    }
    found
}

#[test]
fn a_real_slurm_array_and_merge_give_the_single_run() {
    if !slurm_usable(module_path!()) {
        return;
    }
    let tmp = voxflip_testkit::tempdir().unwrap();
    let d = tmp.path();
    voxflip(d, &["simulate", "--out", "data", "--grid", "small"]);
    std::fs::create_dir(d.join("out")).unwrap();
    ok(voxflip(d, &with(&["-o", "out/single", "--quiet"])), "single run");
    let sub =
        voxflip(d, &[&["slurm", "--shards", "4", "--submit", "--"][..], &with(&["-o", "out/r", "--quiet"])].concat());
    let ids = String::from_utf8_lossy(&sub.stdout).into_owned();
    ok(sub, "submit");
    // Wait for the merge job (bounded): its sidecar is written last.
    let t0 = std::time::Instant::now();
    while !d.join("out/r_voxflip.json").exists() {
        assert!(
            t0.elapsed().as_secs() < 240,
            "the merge job (ids {ids}) did not finish in 240 s; logs in {}",
            d.join("out/r_slurm/logs").display()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    // The sidecar appears last, by a rename; the other outputs are in place before it.
    same_outputs(d, "single", "r");
    for k in 1..=4 {
        assert!(d.join(format!("out/r_slurm/logs/shard-{k}-of-4.err")).exists(), "shard {k}'s log");
    }
}
