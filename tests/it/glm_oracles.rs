//! The statistics against independent oracles: an explicit refit of the full model for
//! Freedman-Lane, brute-force enumeration for exhaustive p-values, closed-form one- and
//! two-sample t, and null calibration of the FWE rate. The oracles here use their own
//! f64 linear algebra (normal equations, Gauss-Jordan), not the library's partition.
// Oracles index several parallel arrays by voxel, as the formulas do.
#![allow(clippy::needless_range_loop)]
use crate::common::all_orderings;
use nalgebra::DMatrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use voxflip_engines::scheduler::permutation_test;
use voxflip_stats::{Blocks, Contrast, ContrastModel, PermKind, PermSet, StatKind};

// ---------- independent f64 helpers ----------

fn gauss_inverse(a: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let n = a.len();
    let mut m: Vec<Vec<f64>> = a
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut row = r.clone();
            row.extend((0..n).map(|j| if i == j { 1.0 } else { 0.0 }));
            row
        })
        .collect();
    for c in 0..n {
        let p = (c..n).max_by(|&x, &y| m[x][c].abs().total_cmp(&m[y][c].abs())).unwrap();
        m.swap(c, p);
        let d = m[c][c];
        for x in m[c].iter_mut() {
            *x /= d;
        }
        for r in 0..n {
            if r != c {
                let f = m[r][c];
                let rowc = m[c].clone();
                for (x, y) in m[r].iter_mut().zip(rowc) {
                    *x -= f * y;
                }
            }
        }
    }
    m.into_iter().map(|r| r[n..].to_vec()).collect()
}

fn xtx(x: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let r = x[0].len();
    (0..r).map(|a| (0..r).map(|b| x.iter().map(|row| row[a] * row[b]).sum()).collect()).collect()
}

/// OLS fit of y on x: (beta, rss).
fn ols(x: &[Vec<f64>], y: &[f64]) -> (Vec<f64>, f64) {
    let inv = gauss_inverse(&xtx(x));
    let r = x[0].len();
    let xty: Vec<f64> = (0..r).map(|a| x.iter().zip(y).map(|(row, &yy)| row[a] * yy).sum()).collect();
    let beta: Vec<f64> = (0..r).map(|a| (0..r).map(|b| inv[a][b] * xty[b]).sum()).collect();
    let rss = x
        .iter()
        .zip(y)
        .map(|(row, &yy)| {
            let f: f64 = row.iter().zip(&beta).map(|(a, b)| a * b).sum();
            (yy - f).powi(2)
        })
        .sum();
    (beta, rss)
}

/// t (s = 1) or F of contrast rows `c` (each of length r) for y on design x.
fn glm_stat(x: &[Vec<f64>], y: &[f64], c: &[Vec<f64>], kind: StatKind) -> f64 {
    let n = x.len();
    let r = x[0].len();
    let (beta, rss) = ols(x, y);
    let sigma2 = rss / (n - r) as f64;
    let inv = gauss_inverse(&xtx(x));
    let cb: Vec<f64> = c.iter().map(|row| row.iter().zip(&beta).map(|(a, b)| a * b).sum()).collect();
    let s = c.len();
    let cvc: Vec<Vec<f64>> = (0..s)
        .map(|a| {
            (0..s).map(|b| (0..r).map(|i| (0..r).map(|j| c[a][i] * inv[i][j] * c[b][j]).sum::<f64>()).sum()).collect()
        })
        .collect();
    match kind {
        StatKind::T => cb[0] / (sigma2 * cvc[0][0]).sqrt(),
        StatKind::F => {
            let ci = gauss_inverse(&cvc);
            let q: f64 = (0..s).map(|a| (0..s).map(|b| cb[a] * ci[a][b] * cb[b]).sum::<f64>()).sum();
            q / s as f64 / sigma2
        }
    }
}

/// Residuals of y on z (z may have no columns).
fn resid(z: &[Vec<f64>], y: &[f64]) -> Vec<f64> {
    if z[0].is_empty() {
        return y.to_vec();
    }
    let (beta, _) = ols(z, y);
    z.iter().zip(y).map(|(row, &yy)| yy - row.iter().zip(&beta).map(|(a, b)| a * b).sum::<f64>()).collect()
}

fn to_dmatrix(x: &[Vec<f64>]) -> DMatrix<f64> {
    DMatrix::from_fn(x.len(), x[0].len(), |i, j| x[i][j])
}

fn random_data(rng: &mut ChaCha8Rng, n: usize, v: usize) -> Vec<f32> {
    (0..n * v).map(|_| (rng.random::<f64>() * 2.0 - 1.0 + rng.random::<f64>() - 0.5) as f32).collect()
}

fn column(y: &[f32], n: usize, v: usize, x: usize) -> Vec<f64> {
    (0..n).map(|i| y[i * v + x] as f64).collect()
}

// ---------- Freedman-Lane fast formulas vs explicit refit ----------

/// For random designs with nuisance, t and F: the engine's statistic for every
/// permutation equals refitting the full model on Y*_j = P_j R_Z Y + H_Z Y.
#[test]
fn freedman_lane_equals_explicit_refit() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let n = 17;
    let v = 9;
    // M = [intercept, group, covariate, covariate2]
    let m: Vec<Vec<f64>> =
        (0..n).map(|i| vec![1.0, (i % 2) as f64, rng.random::<f64>() * 3.0, rng.random::<f64>() - 0.5]).collect();
    // (contrast rows, kind, nuisance columns of M that span Z)
    let cases: Vec<(Vec<Vec<f64>>, StatKind, Vec<usize>)> = vec![
        (vec![vec![0., 1., 0., 0.]], StatKind::T, vec![0, 2, 3]),
        (vec![vec![0., 0., -1., 0.]], StatKind::T, vec![0, 1, 3]),
        (vec![vec![0., 1., 0., 0.], vec![0., 0., 1., 0.]], StatKind::F, vec![0, 3]),
        (vec![vec![0., 1., 0., 0.], vec![0., 0., 1., 0.], vec![0., 0., 0., 1.]], StatKind::F, vec![0]),
    ];
    let y = random_data(&mut rng, n, v);
    for (ci, (crows, kind, zcols)) in cases.iter().enumerate() {
        for pk in [PermKind::SignFlip, PermKind::Permute, PermKind::Both] {
            let contrast =
                Contrast { name: "c".into(), kind: *kind, c: DMatrix::from_fn(4, crows.len(), |i, j| crows[j][i]) };
            let model = ContrastModel::new(&to_dmatrix(&m), &contrast).unwrap();
            let problem = model.problem(&y, v);
            let labels: Vec<u32> = (0..n as u32).collect();
            let perms = PermSet::generate(n, pk, &labels, 40, 3 + ci as u64).unwrap();
            let mut engine = voxflip_engines::cpu::CpuEngine::new();
            engine.prepare(&problem).unwrap();
            let mut maps = vec![0f32; perms.len() * v];
            engine.run_batch(&perms, 0..perms.len(), None, Some(&mut maps)).unwrap();
            let z: Vec<Vec<f64>> = m.iter().map(|row| zcols.iter().map(|&k| row[k]).collect()).collect();
            for x in 0..v {
                let yv = column(&y, n, v, x);
                let e = resid(&z, &yv);
                let hz: Vec<f64> = yv.iter().zip(&e).map(|(a, b)| a - b).collect();
                for j in 0..perms.len() {
                    // Row src[m] of P_j E is sign(m) * E[m] (perm.rs's convention).
                    let mut ystar = hz.clone();
                    for mm in 0..n {
                        ystar[perms.source(j, mm)] += perms.sign(j, mm) as f64 * e[mm];
                    }
                    let want = glm_stat(&m, &ystar, crows, *kind);
                    let got = maps[j * v + x] as f64;
                    // f32 data and f32 accumulation over 17 rows: ~1e-6 relative; 1e-4
                    // leaves room for the statistic's amplification of RSS rounding.
                    assert!(
                        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "case {ci} {pk:?} perm {j} voxel {x}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

// ---------- exhaustive enumeration vs brute force ----------

fn assert_p_close(got: &[f64], want: &[f64], near_ties: &[usize], nperm: usize, what: &str) {
    for x in 0..got.len() {
        // A permutation whose statistic equals the observed one within float rounding may
        // fall on either side; each such near-tie can move p by 1/P.
        let slack = near_ties[x] as f64 / nperm as f64 + 1e-12;
        assert!((got[x] - want[x]).abs() <= slack, "{what} voxel {x}: {} vs {}", got[x], want[x]);
    }
}

#[test]
fn exhaustive_sign_flips_match_brute_force() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (n, v) = (9, 25);
    let y: Vec<f32> = random_data(&mut rng, n, v).iter().map(|x| x + 0.3).collect();
    let m: Vec<Vec<f64>> = vec![vec![1.0]; n];
    let contrast = Contrast { name: "t".into(), kind: StatKind::T, c: DMatrix::from_element(1, 1, 1.0) };
    let model = ContrastModel::new(&to_dmatrix(&m), &contrast).unwrap();
    let perms = PermSet::generate(n, PermKind::SignFlip, &vec![0; n], 5000, 1).unwrap();
    assert!(perms.exhaustive);
    assert_eq!(perms.len(), 512);
    let res = permutation_test(&model.problem(&y, v), &perms).unwrap();
    // Brute force: every sign vector, closed-form one-sample t.
    let t_of = |vals: &[f64]| {
        let nn = vals.len() as f64;
        let mean = vals.iter().sum::<f64>() / nn;
        let var = vals.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (nn - 1.0);
        mean / (var / nn).sqrt()
    };
    let obs: Vec<f64> = (0..v).map(|x| t_of(&column(&y, n, v, x))).collect();
    let mut unc = vec![0usize; v];
    let mut maxes = Vec::new();
    let mut ties = vec![0usize; v];
    for f in 0..(1u32 << n) {
        let mut mx = f64::NEG_INFINITY;
        for x in 0..v {
            let vals: Vec<f64> =
                column(&y, n, v, x).iter().enumerate().map(|(i, &a)| if (f >> i) & 1 == 1 { -a } else { a }).collect();
            let t = t_of(&vals);
            unc[x] += (t >= obs[x]) as usize;
            if (t - obs[x]).abs() < 1e-4 * obs[x].abs().max(1.0) && f != 0 {
                ties[x] += 1;
            }
            mx = mx.max(t);
        }
        maxes.push(mx);
    }
    let p = 512usize;
    let want_unc: Vec<f64> = unc.iter().map(|&c| c as f64 / p as f64).collect();
    let want_fwe: Vec<f64> =
        obs.iter().map(|&o| maxes.iter().filter(|&&mm| mm >= o).count() as f64 / p as f64).collect();
    let got_unc: Vec<f64> = res.counts.iter().map(|&c| c as f64 / p as f64).collect();
    let null = voxflip_stats::MaxStatNull::new(res.null.clone());
    let got_fwe: Vec<f64> = res.observed.iter().map(|&o| null.corrected_p(o)).collect();
    for x in 0..v {
        assert!((res.observed[x] as f64 - obs[x]).abs() < 1e-4 * obs[x].abs().max(1.0));
    }
    // Near-ties in the FWE null: maxima within rounding of the observed value.
    let fwe_ties: Vec<usize> =
        obs.iter().map(|&o| maxes.iter().filter(|&&mm| (mm - o).abs() < 1e-4 * o.abs().max(1.0)).count()).collect();
    assert_p_close(&got_unc, &want_unc, &ties, p, "uncorrected");
    assert_p_close(&got_fwe, &want_fwe, &fwe_ties, p, "FWE");
    // The test must be able to fail: p-values vary across voxels and are not all 1.
    assert!(want_unc.iter().any(|&q| q < 0.2) && want_unc.iter().any(|&q| q > 0.5));
}

#[test]
fn exhaustive_two_sample_permutations_match_brute_force() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let (n, v) = (10, 12);
    let groups = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1];
    let y = random_data(&mut rng, n, v);
    let m: Vec<Vec<f64>> = groups.iter().map(|&g| vec![(g == 0) as u8 as f64, (g == 1) as u8 as f64]).collect();
    let contrast = Contrast { name: "t".into(), kind: StatKind::T, c: DMatrix::from_column_slice(2, 1, &[1.0, -1.0]) };
    let md = to_dmatrix(&m);
    let model = ContrastModel::new(&md, &contrast).unwrap();
    let labels = voxflip_stats::identical_row_labels(&md);
    let perms = PermSet::generate(n, PermKind::Permute, &labels, 1000, 1).unwrap();
    assert!(perms.exhaustive);
    assert_eq!(perms.len(), 252); // C(10, 5)
    let res = permutation_test(&model.problem(&y, v), &perms).unwrap();
    // Brute force: every choice of 5 subjects as group A, pooled-variance t.
    let t2 = |vals: &[f64], a: &[bool]| {
        let (xa, xb): (Vec<f64>, Vec<f64>) = (
            vals.iter().zip(a).filter(|p| *p.1).map(|p| *p.0).collect(),
            vals.iter().zip(a).filter(|p| !*p.1).map(|p| *p.0).collect(),
        );
        let ma = xa.iter().sum::<f64>() / xa.len() as f64;
        let mb = xb.iter().sum::<f64>() / xb.len() as f64;
        let ss = xa.iter().map(|x| (x - ma).powi(2)).sum::<f64>() + xb.iter().map(|x| (x - mb).powi(2)).sum::<f64>();
        let sp2 = ss / (vals.len() - 2) as f64;
        (ma - mb) / (sp2 * (1.0 / xa.len() as f64 + 1.0 / xb.len() as f64)).sqrt()
    };
    let obs_a: Vec<bool> = groups.iter().map(|&g| g == 0).collect();
    let obs: Vec<f64> = (0..v).map(|x| t2(&column(&y, n, v, x), &obs_a)).collect();
    let mut unc = vec![0usize; v];
    let mut ties = vec![0usize; v];
    let mut maxes = Vec::new();
    let mut count = 0;
    for mask in 0u32..(1 << n) {
        if mask.count_ones() != 5 {
            continue;
        }
        count += 1;
        let a: Vec<bool> = (0..n).map(|i| (mask >> i) & 1 == 1).collect();
        let mut mx = f64::NEG_INFINITY;
        for x in 0..v {
            let t = t2(&column(&y, n, v, x), &a);
            unc[x] += (t >= obs[x]) as usize;
            if (t - obs[x]).abs() < 1e-4 * obs[x].abs().max(1.0) && a != obs_a {
                ties[x] += 1;
            }
            mx = mx.max(t);
        }
        maxes.push(mx);
    }
    assert_eq!(count, 252);
    let want_unc: Vec<f64> = unc.iter().map(|&c| c as f64 / 252.0).collect();
    let got_unc: Vec<f64> = res.counts.iter().map(|&c| c as f64 / 252.0).collect();
    assert_p_close(&got_unc, &want_unc, &ties, 252, "uncorrected");
    let null = voxflip_stats::MaxStatNull::new(res.null.clone());
    let fwe_ties: Vec<usize> =
        obs.iter().map(|&o| maxes.iter().filter(|&&mm| (mm - o).abs() < 1e-4 * o.abs().max(1.0)).count()).collect();
    let want_fwe: Vec<f64> = obs.iter().map(|&o| maxes.iter().filter(|&&mm| mm >= o).count() as f64 / 252.0).collect();
    let got_fwe: Vec<f64> = res.observed.iter().map(|&o| null.corrected_p(o)).collect();
    assert_p_close(&got_fwe, &want_fwe, &fwe_ties, 252, "FWE");
}

// ---------- exchangeability blocks vs brute force ----------

/// Uncorrected and FWE p-values by brute force: for every transformation (pi, s) of the
/// group, Y* = s ∘ E[pi] + H_Z Y, refit the full model explicitly. Returns (observed,
/// uncorrected p, FWE p, near-ties per voxel for each). Each distinct transformation of the
/// data may appear several times (orderings that differ only among identical design rows
/// give the same statistic); every class has the same size, so the fractions are those of
/// the distinct set.
#[allow(clippy::type_complexity)]
fn brute_force_p(
    m: &[Vec<f64>],
    z: &[Vec<f64>],
    crows: &[Vec<f64>],
    kind: StatKind,
    y: &[f32],
    v: usize,
    transforms: &[(Vec<usize>, Vec<f64>)],
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<usize>, Vec<usize>) {
    let n = m.len();
    let mut stats = vec![vec![0f64; v]; transforms.len()];
    for x in 0..v {
        let yv = column(y, n, v, x);
        let e = resid(z, &yv);
        for (j, (pi, s)) in transforms.iter().enumerate() {
            let ystar: Vec<f64> = (0..n).map(|i| s[i] * e[pi[i]] + (yv[i] - e[i])).collect();
            stats[j][x] = glm_stat(m, &ystar, crows, kind);
        }
    }
    let obs: Vec<f64> = (0..v).map(|x| glm_stat(m, &column(y, n, v, x), crows, kind)).collect();
    let p = transforms.len() as f64;
    let near = |a: f64, b: f64| (a - b).abs() < 1e-4 * b.abs().max(1.0);
    let maxes: Vec<f64> = stats.iter().map(|row| row.iter().copied().fold(f64::NEG_INFINITY, f64::max)).collect();
    let unc: Vec<f64> = (0..v).map(|x| stats.iter().filter(|r| r[x] >= obs[x]).count() as f64 / p).collect();
    let fwe: Vec<f64> = obs.iter().map(|&o| maxes.iter().filter(|&&mm| mm >= o).count() as f64 / p).collect();
    // Near-ties, scaled to the distinct set's size by the caller's slack (fractions).
    let unc_ties: Vec<usize> = (0..v).map(|x| stats.iter().filter(|r| near(r[x], obs[x])).count()).collect();
    let fwe_ties: Vec<usize> = obs.iter().map(|&o| maxes.iter().filter(|&&mm| near(mm, o)).count()).collect();
    (obs, unc, fwe, unc_ties, fwe_ties)
}

/// p-values from the library for `perms`, compared with the brute-force ones. `z`: a basis
/// of the contrast's nuisance space (what Beckmann partitioning leaves: M's column space
/// minus the tested direction).
#[allow(clippy::too_many_arguments)]
fn check_blocked(
    m: &[Vec<f64>],
    z: &[Vec<f64>],
    crows: &[Vec<f64>],
    kind: StatKind,
    y: &[f32],
    v: usize,
    perms: &PermSet,
    transforms: &[(Vec<usize>, Vec<f64>)],
    what: &str,
) -> Vec<f64> {
    let r = m[0].len();
    let contrast = Contrast { name: "c".into(), kind, c: DMatrix::from_fn(r, crows.len(), |i, j| crows[j][i]) };
    let model = ContrastModel::new(&to_dmatrix(m), &contrast).unwrap();
    // The contrast's nuisance must be what the oracle regresses out.
    assert_eq!(model.dof as usize, m.len() - r);
    let res = permutation_test(&model.problem(y, v), perms).unwrap();
    let (obs, unc, fwe, unc_ties, fwe_ties) = brute_force_p(m, z, crows, kind, y, v, transforms);
    let np = perms.len();
    let total = transforms.len();
    for x in 0..v {
        assert!((res.observed[x] as f64 - obs[x]).abs() < 1e-4 * obs[x].abs().max(1.0), "{what}: observed voxel {x}");
        // A statistic within float rounding of the observed one may fall on either side:
        // each near-tie (ignoring the identity, which always counts) can move p by 1/total.
        let slack = |t: usize| t.saturating_sub(1) as f64 / total as f64 + 1e-12;
        let got_unc = res.counts[x] as f64 / np as f64;
        assert!(
            (got_unc - unc[x]).abs() <= slack(unc_ties[x]),
            "{what} uncorrected voxel {x}: {got_unc} vs {}",
            unc[x]
        );
        let got_fwe = voxflip_stats::MaxStatNull::new(res.null.clone()).corrected_p(res.observed[x]);
        assert!((got_fwe - fwe[x]).abs() <= slack(fwe_ties[x]), "{what} FWE voxel {x}: {got_fwe} vs {}", fwe[x]);
    }
    unc
}

/// randomise -e: rows exchanged only within blocks (a repeated-measures design, subjects as
/// blocks and as nuisance), t and F, against every block-respecting ordering of 8 rows.
#[test]
fn exhaustive_within_block_permutations_match_brute_force() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let (n, v) = (8, 10);
    let block_of: Vec<i64> = vec![3, 3, 3, 3, 8, 8, 8, 8];
    // M = [condition trend, subject 1, subject 2, covariate]
    let m: Vec<Vec<f64>> = (0..n)
        .map(|i| vec![(i % 4) as f64 - 1.5, (i < 4) as u8 as f64, (i >= 4) as u8 as f64, rng.random::<f64>()])
        .collect();
    let y: Vec<f32> =
        random_data(&mut rng, n, v).iter().enumerate().map(|(k, &a)| a + 0.4 * ((k / v) % 4) as f32).collect();
    let transforms: Vec<(Vec<usize>, Vec<f64>)> = all_orderings(n)
        .into_iter()
        .filter(|pi| (0..n).all(|i| block_of[pi[i]] == block_of[i]))
        .map(|pi| (pi, vec![1.0; n]))
        .collect();
    assert_eq!(transforms.len(), 576);
    let labels = voxflip_stats::identical_row_labels(&to_dmatrix(&m));
    let blocks = Blocks::from_labels(&block_of, false).unwrap();
    let perms = PermSet::generate_in_blocks(n, PermKind::Permute, &labels, &blocks, 1000, 1).unwrap();
    assert!(perms.exhaustive);
    assert_eq!(perms.len(), 576);
    let cols = |ks: &[usize]| -> Vec<Vec<f64>> { m.iter().map(|row| ks.iter().map(|&k| row[k]).collect()).collect() };
    let unc = check_blocked(
        &m,
        &cols(&[1, 2, 3]),
        &[vec![1., 0., 0., 0.]],
        StatKind::T,
        &y,
        v,
        &perms,
        &transforms,
        "within t",
    );
    // The test must be able to fail: p-values spread out.
    assert!(unc.iter().any(|&q| q < 0.2) && unc.iter().any(|&q| q > 0.5), "{unc:?}");
    let f = [vec![1., 0., 0., 0.], vec![0., 0., 0., 1.]];
    check_blocked(&m, &cols(&[1, 2]), &f, StatKind::F, &y, v, &perms, &transforms, "within F");
    // Unrestricted permutations give other p-values (the blocks matter here).
    let free = PermSet::generate(n, PermKind::Permute, &labels, 100_000, 1).unwrap();
    let contrast =
        Contrast { name: "c".into(), kind: StatKind::T, c: DMatrix::from_column_slice(4, 1, &[1., 0., 0., 0.]) };
    let model = ContrastModel::new(&to_dmatrix(&m), &contrast).unwrap();
    let res = permutation_test(&model.problem(&y, v), &free).unwrap();
    let free_unc: Vec<f64> = res.counts.iter().map(|&c| c as f64 / free.len() as f64).collect();
    assert!(free_unc.iter().zip(&unc).any(|(a, b)| (a - b).abs() > 0.02));
}

/// randomise --permuteBlocks: whole blocks (subjects with two scans each) exchanged and
/// sign-flipped as units, for a between-subject effect, against every whole-block ordering
/// times every per-block sign pattern.
#[test]
fn exhaustive_whole_block_permutations_and_flips_match_brute_force() {
    let mut rng = ChaCha8Rng::seed_from_u64(22);
    let (n, v) = (8, 12);
    let block_of: Vec<i64> = vec![1, 1, 2, 2, 3, 3, 4, 4];
    // M = [group A, group B, time]: subjects 1 and 2 in A, 3 and 4 in B; two scans each.
    let m: Vec<Vec<f64>> = (0..n)
        .map(|i| vec![(i < 4) as u8 as f64, (i >= 4) as u8 as f64, if i % 2 == 0 { -1.0 } else { 1.0 }])
        .collect();
    let y: Vec<f32> =
        random_data(&mut rng, n, v).iter().enumerate().map(|(k, &a)| a + if k / v < 4 { 0.5 } else { 0.0 }).collect();
    let mut transforms = Vec::new();
    for pi in all_orderings(n) {
        // Whole blocks in order: the two rows of block b come from one block, in order.
        if !(0..n).step_by(2).all(|i| pi[i] % 2 == 0 && pi[i + 1] == pi[i] + 1) {
            continue;
        }
        for f in 0..16u32 {
            let s: Vec<f64> = (0..n).map(|i| if (f >> (i / 2)) & 1 == 1 { -1.0 } else { 1.0 }).collect();
            transforms.push((pi.clone(), s));
        }
    }
    assert_eq!(transforms.len(), 24 * 16);
    let labels = voxflip_stats::identical_row_labels(&to_dmatrix(&m));
    let blocks = Blocks::from_labels(&block_of, true).unwrap();
    let perms = PermSet::generate_in_blocks(n, PermKind::Both, &labels, &blocks, 1000, 1).unwrap();
    assert!(perms.exhaustive);
    // 4! / (2! 2!) distinct block orders (two subjects per group) times 2^4 block signs.
    assert_eq!(perms.len(), 6 * 16);
    // Nuisance of A - B: the intercept (A + B) and time.
    let z: Vec<Vec<f64>> = m.iter().map(|row| vec![row[0] + row[1], row[2]]).collect();
    let unc = check_blocked(&m, &z, &[vec![1., -1., 0.]], StatKind::T, &y, v, &perms, &transforms, "whole t");
    assert!(unc.iter().any(|&q| q < 0.3) && unc.iter().any(|&q| q > 0.5), "{unc:?}");
}

// ---------- closed-form observed t ----------

#[test]
fn observed_t_equals_closed_form_one_and_two_sample() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let (n, v) = (23, 40);
    let y = random_data(&mut rng, n, v);
    let perms1 = PermSet::generate(n, PermKind::SignFlip, &vec![0; n], 1, 0).unwrap();
    // One-sample.
    let ones = DMatrix::from_element(n, 1, 1.0);
    let c1 = Contrast { name: "t".into(), kind: StatKind::T, c: DMatrix::from_element(1, 1, 1.0) };
    let r1 = permutation_test(&ContrastModel::new(&ones, &c1).unwrap().problem(&y, v), &perms1).unwrap();
    // Two-sample, groups of 11 and 12, coded as intercept + indicator (a different
    // parametrization from the cell means the oracle's formula assumes).
    let g: Vec<f64> = (0..n).map(|i| (i < 11) as u8 as f64).collect();
    let m2 = DMatrix::from_fn(n, 2, |i, k| if k == 0 { 1.0 } else { g[i] });
    let c2 = Contrast { name: "t".into(), kind: StatKind::T, c: DMatrix::from_column_slice(2, 1, &[0.0, 1.0]) };
    let r2 = permutation_test(&ContrastModel::new(&m2, &c2).unwrap().problem(&y, v), &perms1).unwrap();
    for x in 0..v {
        let vals = column(&y, n, v, x);
        let mean = vals.iter().sum::<f64>() / n as f64;
        let sd = (vals.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
        let t1 = mean / (sd / (n as f64).sqrt());
        let (a, b): (Vec<f64>, Vec<f64>) = (vals[..11].to_vec(), vals[11..].to_vec());
        let ma = a.iter().sum::<f64>() / 11.0;
        let mb = b.iter().sum::<f64>() / 12.0;
        let sp2 = (a.iter().map(|x| (x - ma).powi(2)).sum::<f64>() + b.iter().map(|x| (x - mb).powi(2)).sum::<f64>())
            / (n - 2) as f64;
        let t2 = (ma - mb) / (sp2 * (1.0 / 11.0 + 1.0 / 12.0)).sqrt();
        // f32 data: 1e-5 relative is a few hundred f32 ulps, ample for sums of 23 terms.
        assert!(
            (r1.observed[x] as f64 - t1).abs() <= 1e-5 * t1.abs().max(1.0),
            "one-sample voxel {x}: {} vs {t1}",
            r1.observed[x]
        );
        assert!(
            (r2.observed[x] as f64 - t2).abs() <= 1e-5 * t2.abs().max(1.0),
            "two-sample voxel {x}: {} vs {t2}",
            r2.observed[x]
        );
    }
}

// ---------- null calibration ----------

/// Under the null, the family-wise rejection rate at 0.05 stays within the binomial 95%
/// interval. Each dataset is pure noise on 300 voxels; a dataset "rejects" when any voxel
/// has FWE p <= 0.05.
fn fwe_rejection_rate(kind: PermKind, datasets: usize, seed: u64) -> usize {
    let (n, v, nperm) = (14, 300, 200);
    let mut rejections = 0;
    for d in 0..datasets {
        let mut rng = ChaCha8Rng::seed_from_u64(seed * 100_000 + d as u64);
        // Symmetric noise (needed for sign flips), correlated across neighbouring voxels.
        let raw: Vec<f32> = (0..n * (v + 2)).map(|_| rng.random::<f32>() - 0.5).collect();
        let y: Vec<f32> = (0..n * v)
            .map(|k| {
                let (i, x) = (k / v, k % v);
                raw[i * (v + 2) + x] + raw[i * (v + 2) + x + 1] + raw[i * (v + 2) + x + 2]
            })
            .collect();
        let (m, c, labels) = match kind {
            PermKind::SignFlip => (DMatrix::from_element(n, 1, 1.0), DMatrix::from_element(1, 1, 1.0), vec![0u32; n]),
            _ => {
                // Two groups with a nuisance covariate: Freedman-Lane.
                let cov: Vec<f64> = (0..n).map(|_| rng.random::<f64>()).collect();
                let m = DMatrix::from_fn(n, 3, |i, k| match k {
                    0 => (i < 7) as u8 as f64,
                    1 => (i >= 7) as u8 as f64,
                    _ => cov[i],
                });
                let labels = voxflip_stats::identical_row_labels(&m);
                (m, DMatrix::from_column_slice(3, 1, &[1.0, -1.0, 0.0]), labels)
            }
        };
        let contrast = Contrast { name: "t".into(), kind: StatKind::T, c };
        let model = ContrastModel::new(&m, &contrast).unwrap();
        let perms = PermSet::generate(n, kind, &labels, nperm, d as u64 + 1).unwrap();
        let res = permutation_test(&model.problem(&y, v), &perms).unwrap();
        let null = voxflip_stats::MaxStatNull::new(res.null);
        let max_obs = res.observed.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if null.corrected_p(max_obs) <= 0.05 {
            rejections += 1;
        }
    }
    rejections
}

#[test]
fn null_fwe_rate_is_calibrated() {
    // 400 datasets at alpha 0.05: expected 20 rejections; binomial 95% interval [12, 29]
    // (central 95% range of Binomial(400, 0.05): P(X <= 11) = P(X >= 30) = 1.9%, so [12, 29] holds 96%).
    for kind in [PermKind::SignFlip, PermKind::Permute] {
        let r = fwe_rejection_rate(kind, 400, 1 + kind as u64);
        assert!((12..=29).contains(&r), "{kind:?}: {r} of 400 null datasets rejected");
        eprintln!("{kind:?}: {r}/400 rejections at FWE 0.05");
    }
}
