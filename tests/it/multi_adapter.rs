//! Several engines in one run (`--adapter all`, lists, `--with-cpu`) against one adapter:
//! the simulated study (small grid) through `voxflip interaction` with voxelwise, TFCE and
//! cluster-extent inference, 200 sign flips from one seed.
//!
//! - `--adapter all` on two adapters gives the single-adapter run's files bit for bit: the
//!   adapters compute identically (Mesa's Vulkan and GL llvmpipe adapters, which CI
//!   installs, do), and the chunks' nulls are appended in permutation order whichever
//!   adapter ran them.
//! - `--with-cpu`: the CPU engine's statistics differ from the GPU kernels' in the last bits
//!   (summation order; measured at most 4e-7 relative on the max-T null of this study, 2e-6
//!   on its TFCE null, where the stepwise sum amplifies it). The observed maps come from the
//!   primary adapter and are identical; the nulls agree within 1e-5 relative (TFCE and
//!   cluster maxima: 98% of them, the rest may sit at a tie with a cluster-forming threshold
//!   or a TFCE level); a p-value can move only at such a tie, by a permutation or two, at a
//!   handful of voxels. Which permutations the CPU runs is fixed by the permutation index,
//!   so the run repeats bit for bit: its two shards merged equal it.
//!
//! Skipped (saying so) with fewer than two usable adapters unless VOXFLIP_REQUIRE_GPU=1.
use crate::common::{gpu_required, gpu_usable, skipped, Tolerance, SIMULATED_INTERACTION};
use std::path::Path;
use voxflip_engines::gpu::list_adapters;

const N_PERM: usize = 200;

fn voxflip(dir: &Path, args: &[&str]) -> String {
    let out = crate::common::voxflip(dir, args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "voxflip {args:?} failed: {err}");
    err
}

/// `voxflip interaction` on the simulated study into `{name}/ia`, with `extra` flags.
fn interaction(d: &Path, name: &str, extra: &[&str]) -> String {
    std::fs::create_dir_all(d.join(name)).unwrap();
    let prefix = format!("{name}/ia");
    let n = N_PERM.to_string();
    let mut args = SIMULATED_INTERACTION.to_vec();
    args.extend_from_slice(&[
        "-o",
        &prefix,
        "-n",
        &n,
        "--seed",
        "7",
        "-x",
        "--uncorrp",
        "-T",
        "-c",
        "2.3",
        "--save-null",
    ]);
    args.extend_from_slice(extra);
    voxflip(d, &args)
}

/// The output files of a run (the sidecar aside: it records the command and the engines).
fn outputs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        // The sidecar and the report record the engines and timings.
        .filter(|f| {
            f.starts_with("ia_")
                && !f.ends_with("_voxflip.json")
                && !f.ends_with("_report.html")
                && !f.contains("_shard-")
        })
        .collect();
    v.sort();
    v
}

fn assert_same_files(a: &Path, b: &Path) {
    let (fa, fb) = (outputs(a), outputs(b));
    assert!(fa.len() > 20, "outputs expected in {}: {fa:?}", a.display());
    assert_eq!(fa, fb, "the same outputs");
    for f in &fa {
        let (x, y) = (std::fs::read(a.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap());
        assert!(x == y, "{f}: {} and {} differ", a.display(), b.display());
    }
}

fn null(dir: &Path, name: &str) -> Vec<f32> {
    std::fs::read_to_string(dir.join(name)).unwrap().split_whitespace().map(|s| s.parse().unwrap()).collect()
}

fn map(dir: &Path, name: &str) -> Vec<f32> {
    voxflip_io::read_image(&dir.join(name)).unwrap().data
}

/// The adapters `--backend gpu --adapter all` can use (compute shaders), or None (skipped)
/// with fewer than two.
fn two_adapters(what: &str) -> Option<Vec<voxflip_engines::gpu::AdapterSummary>> {
    if !gpu_usable(what) {
        return None;
    }
    let usable: Vec<_> = list_adapters().into_iter().filter(|a| a.compute).collect();
    if usable.len() < 2 {
        let names: Vec<_> = usable.iter().map(|a| format!("{} ({})", a.name, a.backend)).collect();
        if gpu_required() {
            panic!("VOXFLIP_REQUIRE_GPU=1 but fewer than two usable GPU adapters: {names:?}");
        }
        skipped(what, &format!("fewer than two GPU adapters: {names:?}"));
        return None;
    }
    Some(usable)
}

#[test]
fn all_adapters_give_the_single_adapter_run() {
    let Some(adapters) = two_adapters(module_path!()) else { return };
    let tmp = voxflip_testkit::tempdir().unwrap();
    let d = tmp.path();
    voxflip(d, &["simulate", "--out", "data", "--grid", "small"]);
    let first = adapters[0].name.as_str();
    let one_log = interaction(d, "one", &["--backend", "gpu", "--adapter", first]);
    assert!(one_log.contains("engine: gpu"), "{one_log}");
    let all_log = interaction(d, "all", &["--backend", "gpu", "--adapter", "all"]);
    assert!(all_log.contains("engines (") && all_log.contains("multi: gpu"), "{all_log}");
    // Every engine ran some of the permutations (the log says how many each).
    let shares = all_log.lines().find(|l| l.contains("permutations per engine:")).expect("the shares on the log");
    assert!(!shares.contains(": 0 on") && !shares.contains(", 0 on"), "an engine ran nothing: {shares}");
    let sidecar = std::fs::read_to_string(d.join("all/ia_voxflip.json")).unwrap();
    for a in &adapters[..2] {
        let described = format!("gpu: {} ({},", a.name, a.backend);
        assert!(sidecar.contains(&described), "the sidecar's backend should name {described}: {sidecar}");
    }
    assert!(sidecar.contains("\"backend\": \"multi: "), "{sidecar}");
    assert_same_files(&d.join("one"), &d.join("all"));

    // The CPU engine joins: identical observed maps, nulls within rounding, p-values equal
    // but at ties (see the module docs).
    let cpu_log = interaction(d, "cpu", &["--backend", "gpu", "--adapter", "all", "--with-cpu"]);
    let shares = cpu_log.lines().find(|l| l.contains("permutations per engine:")).expect("the shares on the log");
    assert!(shares.contains(" on cpu") && !shares.contains(" 0 on cpu"), "the CPU must run some: {shares}");
    let sidecar = std::fs::read_to_string(d.join("cpu/ia_voxflip.json")).unwrap();
    assert!(sidecar.contains("; cpu ("), "the sidecar's backend should name the CPU engine: {sidecar}");
    let (one, cpu) = (d.join("one"), d.join("cpu"));
    assert_eq!(outputs(&one), outputs(&cpu));
    let voxels = map(&one, "ia_tstat1.nii.gz").iter().filter(|x| **x != 0.0).count();
    let rounding = Tolerance::rel(1e-5);
    for con in ["tstat1", "tstat2", "tstat3"] {
        for observed in [format!("ia_{con}.nii.gz"), format!("ia_tfce_{con}.nii.gz")] {
            assert!(
                std::fs::read(one.join(&observed)).unwrap() == std::fs::read(cpu.join(&observed)).unwrap(),
                "{observed}: the observed map comes from the primary adapter"
            );
        }
        let file = format!("ia_vox_corrp_{con}.txt");
        let (a, b) = (null(&one, &file), null(&cpu, &file));
        assert_eq!((a.len(), b.len()), (N_PERM, N_PERM), "{file}");
        assert_eq!(a[0], b[0], "{file}: the identity permutation runs on the primary adapter");
        for (j, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(rounding.close(*x, *y), "{file}: permutation {j}: {x} vs {y}");
        }
        for what in ["tfce", "clustere"] {
            let file = format!("ia_{what}_corrp_{con}.txt");
            let (a, b) = (null(&one, &file), null(&cpu, &file));
            assert_eq!(a.len(), b.len(), "{file}");
            assert_eq!(a[0], b[0], "{file}: the identity permutation runs on the primary adapter");
            let agree = a.iter().zip(&b).filter(|(x, y)| rounding.close(**x, **y)).count();
            assert!(agree * 100 >= a.len() * 98, "{file}: only {agree} of {} maxima agree", a.len());
        }
        for p in ["vox_p", "vox_corrp", "tfce_p", "tfce_corrp", "clustere_corrp"] {
            let file = format!("ia_{p}_{con}.nii.gz");
            let (a, b) = (map(&one, &file), map(&cpu, &file));
            assert_eq!(a.len(), b.len(), "{file}");
            let moved: Vec<(f32, f32)> = a.iter().zip(&b).filter(|(x, y)| x != y).map(|(x, y)| (*x, *y)).collect();
            assert!(moved.len() * 1000 <= voxels.max(5000), "{file}: {} voxels moved: {moved:?}", moved.len());
            for (x, y) in &moved {
                assert!((x - y).abs() <= 2.0 / N_PERM as f32 + 1e-6, "{file}: a p-value moved from {x} to {y}");
            }
        }
    }

    // Repeatable whatever the timing, and however the run is split: its shards merged.
    for k in ["1/2", "2/2"] {
        interaction(d, "shards", &["--backend", "gpu", "--adapter", "all", "--with-cpu", "--shard", k, "--quiet"]);
    }
    voxflip(d, &["merge", "shards/ia", "-x", "--uncorrp", "--save-null", "--quiet"]);
    assert_same_files(&cpu, &d.join("shards"));
}

/// Several engines need a GPU backend, and a list names what it cannot find: one line each.
#[test]
fn multi_adapter_flags_are_checked() {
    let tmp = voxflip_testkit::tempdir().unwrap();
    let d = tmp.path();
    voxflip(d, &["simulate", "--out", "data", "--grid", "small", "--n-a", "6", "--n-b", "6"]);
    let base = [&SIMULATED_INTERACTION[..], &["-o", "out/ia", "-n", "20", "--quiet"]].concat();
    std::fs::create_dir(d.join("out")).unwrap();
    let fails = |extra: &[&str], words: &[&str]| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let out = crate::common::voxflip(d, &args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{extra:?}: one line expected: {err}");
        for w in words {
            assert!(lines[0].contains(w), "{extra:?}: the message should say '{w}': {err}");
        }
        assert!(std::fs::read_dir(d.join("out")).unwrap().next().is_none(), "{extra:?}: no outputs expected");
    };
    fails(&["--backend", "cpu", "--adapter", "all"], &["--adapter all", "--backend cpu"]);
    fails(&["--backend", "cpu", "--adapter", "vulkan,gl"], &["--adapter vulkan,gl", "--backend cpu"]);
    fails(&["--backend", "cpu", "--with-cpu"], &["--with-cpu", "--backend cpu"]);
    // Whether or not adapters exist: no adapter is called nosuch.
    fails(&["--backend", "gpu", "--adapter", "nosuch,lavapipe"], &["'nosuch'"]);
    fails(&["--adapter", "nosuch,llvmpipe"], &["'nosuch'"]);
}
