//! randomise's permutation options against oracles written here: `-q` prints the number of
//! distinct permutations a brute-force enumeration finds (sign flips, relabelings of a
//! design with repeated rows, exchangeability blocks, --effective_design, --detectNull),
//! `-Q` randomise's parallel-mode line, `-P` vectors that, applied to the data here,
//! reproduce the written null; `--skipTo` runs only the contrast it names; an absurd `-n`
//! is refused in one line, fast, under a memory limit.
use crate::cli::{data, write, Case, DIMS, GLM};
use crate::common::all_orderings;
use std::collections::HashSet;
use std::process::Command;

/// Runs voxflip in the case's folder: (exit code, stdout, stderr).
fn run(c: &Case, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_voxflip"))
        .args(args)
        .current_dir(c.p(""))
        .env("XDG_RUNTIME_DIR", "/tmp")
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// `-q`'s stdout for the case's data and these extra arguments, checked to exit 0 and to
/// write nothing.
fn count_lines(c: &Case, extra: &[&str]) -> Vec<String> {
    let args = [&GLM[..], &["-q"], extra].concat();
    let (code, out, err) = run(c, &args);
    assert_eq!(code, 0, "{args:?}: {err}");
    assert!(c.outputs().is_empty(), "-q wrote {:?}", c.outputs());
    out.lines().map(str::to_string).collect()
}

/// The brute-force count: of all n! orderings those `allowed` accepts, as the distinct
/// sequences of row labels they produce.
fn distinct_relabelings(labels: &[u32], allowed: impl Fn(&[usize]) -> bool) -> usize {
    let seqs: HashSet<Vec<u32>> = all_orderings(labels.len())
        .into_iter()
        .filter(|src| allowed(src))
        .map(|src| src.iter().map(|&s| labels[s]).collect())
        .collect();
    seqs.len()
}

/// A VEST matrix file of these rows.
fn vest(rows: &[Vec<f64>]) -> String {
    let body: String =
        rows.iter().map(|r| r.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" ") + "\n").collect();
    format!("/NumWaves {}\n/NumPoints {}\n/Matrix\n{body}", rows[0].len(), rows.len())
}

/// Indicator columns of these group labels (one column per group).
fn indicators(groups: &[u32]) -> Vec<Vec<f64>> {
    let k = *groups.iter().max().unwrap() as usize + 1;
    groups.iter().map(|&g| (0..k).map(|j| if j == g as usize { 1.0 } else { 0.0 }).collect()).collect()
}

#[test]
fn dash_q_prints_the_brute_force_count_of_relabelings_and_sign_flips() {
    let c = Case::new();
    // Three groups of 3, 3 and 4 identical rows: 10! / (3! 3! 4!) distinct relabelings.
    let groups = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2];
    c.text("design.mat", &vest(&indicators(&groups)));
    c.text("design.con", "/NumWaves 3\n/NumContrasts 2\n/Matrix\n1 -1 0\n0 1 -1\n");
    c.text("design.fts", "/NumWaves 2\n/NumContrasts 1\n/Matrix\n1 1\n");
    let all = distinct_relabelings(&groups, |_| true);
    assert_eq!(all, 4200);
    // randomise's order: F-tests first, then t contrasts.
    assert_eq!(
        count_lines(&c, &["-f", "design.fts"]),
        [
            format!("{all} permutations required for exhaustive test of f-test 1"),
            format!("{all} permutations required for exhaustive test of t-test 1"),
            format!("{all} permutations required for exhaustive test of t-test 2"),
        ]
    );
    // --skipTo 3 is the second t contrast (one F-test comes first).
    assert_eq!(
        count_lines(&c, &["-f", "design.fts", "--skipTo", "3"]),
        [format!("{all} permutations required for exhaustive test of t-test 2")]
    );
    // Blocks: rows move only within their block.
    c.text("design.grp", "/NumWaves 1\n/NumPoints 10\n/Matrix\n1\n1\n1\n1\n1\n2\n2\n2\n2\n2\n");
    let block = |r: usize| r / 5;
    let within = distinct_relabelings(&groups, |src| (0..10).all(|m| block(src[m]) == block(m)));
    // Block 1 holds a a a b b (5!/(3! 2!) = 10 orders), block 2 b c c c c (5).
    assert_eq!(within, 10 * 5);
    let lines = count_lines(&c, &["-e", "design.grp"]);
    assert_eq!(lines[0], format!("{within} permutations required for exhaustive test of t-test 1"));
    // Sign flips (-1): every sign vector of 10 rows, counted.
    let flips: HashSet<Vec<bool>> = (0..1u32 << 10).map(|b| (0..10).map(|m| b >> m & 1 == 1).collect()).collect();
    c.text("design.mat", &vest(&vec![vec![1.0]; 10]));
    c.text("design.con", "/NumWaves 1\n/NumContrasts 1\n/Matrix\n1\n");
    assert_eq!(
        count_lines(&c, &["-1"]),
        [
            "One-sample design detected; sign-flipping instead of permuting.".to_string(),
            format!("{} sign-flips required for exhaustive test of t-test 1", flips.len())
        ]
    );
}

#[test]
fn dash_q_counts_relabelings_of_the_effective_regressor_as_randomise() {
    // Two groups of 5 and an age covariate. randomise tells permutations apart by the rows of
    // the demeaned design times the contrast, not by the whole design's rows: for the group
    // difference only the group sequence counts, for the age effect only the ages.
    let c = Case::new();
    let groups = [0u32, 0, 0, 0, 0, 1, 1, 1, 1, 1];
    let ages = [30.0, 31.0, 30.0, 35.0, 31.0, 30.0, 40.0, 35.0, 31.0, 30.0];
    let rows: Vec<Vec<f64>> = indicators(&groups)
        .into_iter()
        .zip(ages)
        .map(|(mut r, a)| {
            r.push(a);
            r
        })
        .collect();
    c.text("design.mat", &vest(&rows));
    c.text("design.con", "/NumWaves 3\n/NumContrasts 2\n/Matrix\n1 -1 0\n0 0 1\n");
    let age_labels: Vec<u32> = ages.iter().map(|&a| a as u32).collect();
    let (by_group, by_age) = (distinct_relabelings(&groups, |_| true), distinct_relabelings(&age_labels, |_| true));
    // 10! / (5! 5!) and 10! / (4! 3! 2! 1!).
    assert_eq!((by_group, by_age), (252, 12600));
    assert_eq!(
        count_lines(&c, &[]),
        [
            format!("{by_group} permutations required for exhaustive test of t-test 1"),
            format!("{by_age} permutations required for exhaustive test of t-test 2"),
        ]
    );
}

#[test]
fn whole_blocks_count_the_distinct_block_orders() {
    let c = Case::new();
    // Two groups of 5, blocks of two rows: whole blocks (a a), (a a), (a b), (b b), (b b)
    // exchanged as units.
    let groups = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1];
    c.text("design.mat", &vest(&indicators(&groups)));
    c.text("design.grp", "/NumWaves 1\n/NumPoints 10\n/Matrix\n1\n1\n2\n2\n3\n3\n4\n4\n5\n5\n");
    // Whole blocks: position m's row comes from one block, at the same offset.
    let whole =
        distinct_relabelings(&groups, |src| (0..10).all(|m| src[m] % 2 == m % 2 && src[m - m % 2] + m % 2 == src[m]));
    // 5! / (2! 1! 2!) = 30 orders of the blocks' label pairs.
    assert_eq!(whole, 30);
    let lines = count_lines(&c, &["-e", "design.grp", "--permuteBlocks"]);
    assert_eq!(lines[0], format!("{whole} permutations required for exhaustive test of t-test 1"));
}

#[test]
fn effective_design_and_detect_null_decide_the_set() {
    let c = Case::new();
    // The design says two groups of 5; the effective design distinguishes three kinds of
    // row, so the relabelings distinct under it are more.
    let eff = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2];
    c.text("design2.mat", &vest(&eff.iter().map(|&g| vec![g as f64 * 2.0 + 1.0]).collect::<Vec<_>>()));
    let want = distinct_relabelings(&eff, |_| true);
    assert_eq!(
        count_lines(&c, &["--effective_design", "design2.mat"])[0],
        format!("{want} permutations required for exhaustive test of t-test 1")
    );
    // --detectNull: three groups, contrast [1 -1 0]. The demeaned design times the
    // contrast is x1 - x2 (groups of 3 and 3 have the same mean), zero on group c's rows:
    // those stay in place.
    let groups = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2];
    let x = indicators(&groups);
    c.text("design.mat", &vest(&x));
    c.text("design.con", "/NumWaves 3\n/NumContrasts 1\n/Matrix\n1 -1 0\n");
    let mean = |k: usize| x.iter().map(|r| r[k]).sum::<f64>() / 10.0;
    let null: Vec<bool> = x.iter().map(|r| ((r[0] - mean(0)) - (r[1] - mean(1))).abs() < 1e-10).collect();
    assert_eq!(null, [false, false, false, false, false, false, true, true, true, true]);
    let fixed = |src: &[usize]| (0..10).all(|m| !null[m] || src[m] == m);
    let want = distinct_relabelings(&groups, fixed);
    assert_eq!(want, 20);
    let line = format!("{want} permutations required for exhaustive test of t-test 1");
    assert_eq!(count_lines(&c, &["--detectNull"])[0], line);
    // The run's own set, through -P: exactly the brute-force set, null rows unmoved.
    let mut args = [&GLM[..], &["--detectNull", "-P", "--backend", "cpu", "--no-report", "--quiet"]].concat();
    args[9] = "0";
    let (code, _, err) = run(&c, &args);
    assert_eq!(code, 0, "{err}");
    let vectors = std::fs::read_to_string(c.p("out/r_perm_tstat1.txt")).unwrap();
    let srcs: Vec<Vec<usize>> =
        vectors.lines().map(|l| l.split(' ').map(|v| v.parse::<usize>().unwrap() - 1).collect()).collect();
    assert!(srcs.iter().all(|s| fixed(s)), "a null row moved:\n{vectors}");
    let seqs: HashSet<Vec<u32>> = srcs.iter().map(|s| s.iter().map(|&r| groups[r]).collect()).collect();
    assert_eq!((srcs.len(), seqs.len()), (want, want));
}

#[test]
fn dash_big_q_prints_the_parallel_line_and_needs_a_count() {
    let c = Case::new();
    let (code, out, err) = run(&c, &[&GLM[..], &["-Q"]].concat());
    assert_eq!((code, out.as_str()), (0, "50 1 out/r 300\n"), "{err}");
    let (_, out, _) = run(&c, &[&GLM[..], &["-Q", "-T"]].concat());
    assert_eq!(out, "50 1 out/r 100\n");
    assert!(c.outputs().is_empty());
    let mut args = [&GLM[..], &["-Q"]].concat();
    args[9] = "0";
    let (code, out, err) = run(&c, &args);
    assert_eq!((code, out.as_str()), (2, ""));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("-n 0 is not allowed"), "{err}");
}

/// t of y on the single regressor x (no intercept): beta / se, residual dof n - 1.
fn t_through_origin(x: &[f64], y: &[f64]) -> f64 {
    let xx: f64 = x.iter().map(|a| a * a).sum();
    let beta = x.iter().zip(y).map(|(a, b)| a * b).sum::<f64>() / xx;
    let rss: f64 = x.iter().zip(y).map(|(a, b)| (b - beta * a).powi(2)).sum();
    beta / (rss / (x.len() - 1) as f64 / xx).sqrt()
}

/// The run's -P vectors applied to the data here: per line, the maximum over voxels of t
/// with design row m = sign * x[src[m]] (randomise's reading of the file).
fn nulls_from_vectors(c: &Case, x: &[f64], sign_flips: bool) -> Vec<f64> {
    let img = voxflip_io::read_image(&c.p("in.nii.gz")).unwrap();
    let nvox: usize = DIMS.iter().product();
    let vectors = std::fs::read_to_string(c.p("out/r_perm_tstat1.txt")).unwrap();
    vectors
        .lines()
        .map(|line| {
            let v: Vec<i64> = line.split(' ').map(|s| s.parse().unwrap()).collect();
            assert_eq!(v.len(), x.len());
            let xp: Vec<f64> = if sign_flips {
                v.iter().zip(x).map(|(&s, &a)| s as f64 * a).collect()
            } else {
                v.iter().map(|&s| x[s as usize - 1]).collect()
            };
            (0..nvox)
                .map(|k| {
                    let y: Vec<f64> = (0..x.len()).map(|i| img.data[i * nvox + k] as f64).collect();
                    t_through_origin(&xp, &y)
                })
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .collect()
}

#[test]
fn dash_p_vectors_reproduce_the_written_null() {
    let c = Case::new();
    // Sign flips (-1, a column of ones) and relabelings (one covariate, no intercept:
    // no nuisance, so relabeling the design is relabeling the data).
    let covariate: Vec<f64> = (0..10).map(|i| ((i * 7 % 10) as f64 - 4.5) / 3.0).collect();
    for (design, flips) in [(vec![1.0; 10], true), (covariate, false)] {
        let _ = std::fs::remove_dir_all(c.p("out"));
        std::fs::create_dir(c.p("out")).unwrap();
        c.text("design.mat", &vest(&design.iter().map(|&a| vec![a]).collect::<Vec<_>>()));
        c.text("design.con", "/NumWaves 1\n/NumContrasts 1\n/Matrix\n1\n");
        let mut args = [&GLM[..], &["-P", "-N", "-x", "--backend", "cpu", "--no-report", "--quiet"]].concat();
        args[9] = "40";
        let (code, _, err) = run(&c, &args);
        assert_eq!(code, 0, "{err}");
        let written: Vec<f64> = std::fs::read_to_string(c.p("out/r_vox_corrp_tstat1.txt"))
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        let ours = nulls_from_vectors(&c, &design, flips);
        assert_eq!(ours.len(), 40);
        assert_eq!(written.len(), 40);
        let distinct: HashSet<String> =
            std::fs::read_to_string(c.p("out/r_perm_tstat1.txt")).unwrap().lines().map(str::to_string).collect();
        assert_eq!(distinct.len(), 40, "the vectors repeat");
        for (j, (a, b)) in ours.iter().zip(&written).enumerate() {
            // The engine's t is f32 from a 10-row partitioned fit: 1e-4 relative covers it,
            // while any other permutation's maximum differs by far more.
            assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "permutation {j} (flips {flips}): {a} vs {b}");
        }
    }
}

#[test]
fn skip_to_runs_only_the_contrast_it_names() {
    let c = Case::new();
    c.text("design.con", "/NumWaves 2\n/NumContrasts 2\n/Matrix\n1 -1\n-1 1\n");
    c.text("design.fts", "/NumWaves 2\n/NumContrasts 1\n/Matrix\n1 1\n");
    let base = [&GLM[..], &["-f", "design.fts", "--backend", "cpu", "--no-report", "--quiet"]].concat();
    for (n, name) in [("1", "fstat1"), ("3", "tstat2")] {
        let _ = std::fs::remove_dir_all(c.p("out"));
        std::fs::create_dir(c.p("out")).unwrap();
        let (code, _, err) = run(&c, &[&base[..], &["--skipTo", n]].concat());
        assert_eq!(code, 0, "{err}");
        let maps: Vec<String> =
            c.outputs().into_iter().filter(|f| f.ends_with(".nii.gz") && !f.contains("mean")).collect();
        assert_eq!(maps, [format!("r_{name}.nii.gz")], "--skipTo {n}");
    }
    let _ = std::fs::remove_dir_all(c.p("out"));
    std::fs::create_dir(c.p("out")).unwrap();
    let (code, _, err) = run(&c, &[&base[..], &["--skipTo", "4"]].concat());
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("1 F-test(s) (numbered first) and 2 t contrast(s)"), "{err}");
    assert!(c.outputs().is_empty());
}

#[test]
fn absurd_permutation_counts_are_refused_fast_in_one_line() {
    let c = Case::new();
    // 48 images, one-sample: 2^48 distinct sign flips, so -n 99999999999 is a random set
    // of 10^11 (over 2 TB), which no test machine holds.
    write(&c.p("in48.nii.gz"), DIMS, 48, &data(48, 3));
    let args = ["-i", "in48.nii.gz", "-1", "-o", "out/r", "-n", "99999999999", "--backend", "cpu", "-T"];
    let start = std::time::Instant::now();
    // Under a 2 GB address-space limit: the set is never allocated, not even in part.
    let out = Command::new("prlimit")
        .args(["--as=2000000000", "--", env!("CARGO_BIN_EXE_voxflip")])
        .args(args)
        .current_dir(c.p(""))
        .output();
    let out = match out {
        Ok(o) => o,
        // Without util-linux's prlimit: the same, unbounded (the time bound still holds).
        Err(_) => Command::new(env!("CARGO_BIN_EXE_voxflip")).args(args).current_dir(c.p("")).output().unwrap(),
    };
    let seconds = start.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("-n 99999999999") && lines[0].contains("TB of memory") && lines[0].contains("MemAvailable"),
        "{err}"
    );
    // Reading 48 tiny volumes and refusing: well under a second; 10 s is slack for a loaded CI.
    assert!(seconds < 10.0, "{seconds} s");
    assert!(c.outputs().is_empty(), "{:?}", c.outputs());
}

#[test]
fn randomise_options_without_a_meaning_here_are_refused_in_one_line() {
    let c = Case::new();
    for (flag, words) in [(&["--twopass"][..], "--twopass"), (&["--multi", "3"][..], "--multi")] {
        let (code, _, err) = run(&c, &[&GLM[..], flag].concat());
        assert_eq!(code, 2, "{flag:?}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(words) && err.contains("not supported"), "{err}");
    }
    // --debug is accepted (a no-op) for randomise scripts.
    let (code, _, err) = run(&c, &[&GLM[..], &["--debug", "-q"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(c.outputs().is_empty());
}

#[test]
fn dash_p_file_is_the_same_from_shards_merged_as_from_one_run() {
    let c = Case::new();
    let mut base = [&GLM[..], &["-P", "--backend", "cpu", "--no-report", "--quiet"]].concat();
    let (code, _, err) = run(&c, &base);
    assert_eq!(code, 0, "{err}");
    let single = std::fs::read_to_string(c.p("out/r_perm_tstat1.txt")).unwrap();
    assert_eq!(single.lines().count(), 50);
    base[3] = "out/m";
    for k in ["1/2", "2/2"] {
        let (code, _, err) = run(&c, &[&base[..], &["--shard", k]].concat());
        assert_eq!(code, 0, "{err}");
    }
    let (code, _, err) = run(&c, &["merge", "out/m", "--quiet"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_to_string(c.p("out/m_perm_tstat1.txt")).unwrap(), single);
}

/// The permutation vectors FSL randomise v2.9 itself wrote (-P) for a two-group design with
/// a covariate, exhaustive over the group relabelings, with and without exchangeability
/// blocks (tests/data/randomise_walk). With nuisance, which row permutation represents a
/// relabeling changes the statistic, so exhaustive p-values equal randomise's only when the
/// representatives do: voxflip's -P file must be randomise's, line for line.
#[test]
fn dash_p_file_is_randomise_s_own_for_a_design_with_a_covariate() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/randomise_walk");
    let c = Case::new();
    for f in ["design.mat", "design.con", "design.grp"] {
        std::fs::copy(fixtures.join(f), c.p(f)).unwrap();
    }
    let vectors = |text: &str| -> Vec<Vec<i64>> {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split_whitespace().map(|x| x.parse::<f64>().unwrap() as i64).collect())
            .collect()
    };
    for (extra, file, count) in [
        (&[][..], "randomise_perm_tstat1.txt", 210),
        (&["-e", "design.grp"][..], "randomise_blocks_perm_tstat1.txt", 100),
    ] {
        let glm = ["-i", "in.nii.gz", "-o", "out/r", "-d", "design.mat", "-t", "design.con", "-n", "5000"];
        let args = [&glm[..], &["-x", "-P", "--backend", "cpu", "--no-report", "--quiet"], extra].concat();
        let (code, _, err) = run(&c, &args);
        assert_eq!(code, 0, "{args:?}: {err}");
        let want = vectors(&std::fs::read_to_string(fixtures.join(file)).unwrap());
        let got = vectors(&std::fs::read_to_string(c.p("out/r_perm_tstat1.txt")).unwrap());
        assert_eq!(want.len(), count, "{file}");
        assert_eq!(got.len(), want.len(), "{extra:?}: number of permutations");
        if let Some(k) = (0..want.len()).find(|&k| got[k] != want[k]) {
            panic!("{extra:?}: permutation {} is {:?}, randomise's {:?}", k + 1, got[k], want[k]);
        }
    }
}
