//! The table-driven product against the matrix product and a brute-force refit.
use super::*;
use rand::{Rng, SeedableRng};
use voxflip_stats::{statistic, Blocks, PermKind, StatKind};

/// A problem whose Q has `groups` distinct rows when given (a design of group indicators
/// without covariates), else random rows.
fn problem(
    n: usize,
    v: usize,
    q: usize,
    s: usize,
    kind: StatKind,
    groups: Option<usize>,
    seed: u64,
) -> ContrastProblem {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let e: Vec<f32> = (0..n * v).map(|_| rng.random::<f32>() - 0.5).collect();
    let qbasis: Vec<f32> = match groups {
        Some(g) => {
            let rows: Vec<Vec<f32>> = (0..g).map(|_| (0..q).map(|_| rng.random::<f32>() - 0.5).collect()).collect();
            (0..n).flat_map(|i| rows[(i * 7 + i / 3) % g].clone()).collect()
        }
        None => (0..n * q).map(|_| rng.random::<f32>() - 0.5).collect(),
    };
    let ss: Vec<f32> = (0..v).map(|x| (0..n).map(|i| e[i * v + x] * e[i * v + x]).sum::<f32>() * 2.0).collect();
    ContrastProblem { n, v, q, s, kind, dof: (n - q) as f32, qbasis, e, ss, voxel_qbasis: None }
}

/// Every map of the set, with the maxima and counts, on `eng`.
fn run(eng: &mut CpuEngine, p: &ContrastProblem, perms: &PermSet, observed: &[f32]) -> (Vec<f32>, BatchResult) {
    eng.prepare(p).unwrap();
    let mut maps = vec![0f32; perms.len() * p.v];
    let res = eng.run_batch(perms, 0..perms.len(), Some(observed), Some(&mut maps)).unwrap();
    (maps, res)
}

/// The statistic of permutation j at voxel x from a refit in f64: u = Q' P_j E[:, x].
fn refit(p: &ContrastProblem, perms: &PermSet, j: usize, x: usize) -> f32 {
    let (n, q, v) = (p.n, p.q, p.v);
    let mut a = vec![0f32; q * n];
    perms.coefficient_rows(j, &p.qbasis, q, &mut a);
    let u: Vec<f32> =
        (0..q).map(|k| (0..n).map(|i| a[k * n + i] as f64 * p.e[i * v + x] as f64).sum::<f64>() as f32).collect();
    statistic(p.kind, &u, p.s, p.ss[x], p.dof)
}

/// The tolerance of one statistic. Both products sum N terms in f32, within
/// γ_{N+1} Σ_i |Q_ik E_iv| ≈ 4e-6 Σ|w| of the exact u for N ≤ 60; with |w| ≤ 0.25 here and
/// u ~ 0.1 sqrt(N), that is under 1e-5 relative to u, or absolute where u is near 0, and
/// the statistic's reciprocal square root adds 2 ulp. 1e-4 relative plus 1e-4 absolute
/// covers both with a margin, and is far below what any p-value or test here resolves.
fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-4 * b.abs().max(a.abs()) + 1e-4
}

fn check(label: &str, p: &ContrastProblem, perms: &PermSet, bits: Option<usize>) {
    let observed: Vec<f32> = (0..p.v).map(|x| (x % 7) as f32 * 0.3 - 0.6).collect();
    let mut table = CpuEngine::new();
    table.set_product(Product::Table);
    table.table_bits = bits;
    table.prepare(p).unwrap();
    assert!(table.uses_tables(perms), "{label}: the set should run on the tables");
    let mut gemm = CpuEngine::new();
    gemm.set_product(Product::Gemm);
    let (tm, tr) = run(&mut table, p, perms, &observed);
    let (gm, gr) = run(&mut gemm, p, perms, &observed);
    for j in 0..perms.len() {
        let mut mx = f32::NEG_INFINITY;
        for x in 0..p.v {
            let (t, g, r) = (tm[j * p.v + x], gm[j * p.v + x], refit(p, perms, j, x));
            assert!(close(t, r) && close(t, g), "{label} j={j} x={x}: table {t}, matrix {g}, refit {r}");
            mx = mx.max(t);
        }
        assert_eq!(tr.max_stat[j], mx, "{label} j={j}: the maximum is the maximum of the map");
    }
    // Counts from the same maps: equal to the matrix path's except at near-ties.
    for x in 0..p.v {
        let count = (0..perms.len()).filter(|&j| tm[j * p.v + x] >= observed[x]).count() as u32;
        assert_eq!(tr.exceed[x], count, "{label} x={x}");
        let near = (0..perms.len()).filter(|&j| close(tm[j * p.v + x], observed[x])).count() as u32;
        assert!(tr.exceed[x].abs_diff(gr.exceed[x]) <= near, "{label} x={x}");
    }
}

/// Sign flips: t and F, q from 1 to 6, N not a multiple of the block, blocks of 1 row and of
/// the largest size, one voxel, fewer permutations than a block of the epilogue.
#[test]
fn sign_flip_tables_equal_the_matrix_product_and_a_refit() {
    for &(n, v, q, s, kind, bits) in &[
        (7usize, 1usize, 1usize, 1usize, StatKind::T, None),
        (13, 130, 2, 1, StatKind::T, Some(1)),
        (13, 130, 2, 1, StatKind::T, Some(table::MAX_BITS)),
        (29, 65, 4, 3, StatKind::F, None),
        (58, 200, 2, 1, StatKind::T, None),
        (61, 70, 6, 2, StatKind::F, Some(5)),
        (40, 17, 3, 1, StatKind::T, Some(8)),
    ] {
        let p = problem(n, v, q, s, kind, None, n as u64 + q as u64);
        for count in [5usize, 250] {
            let perms = PermSet::generate(n, PermKind::SignFlip, &vec![0; n], count, 3).unwrap();
            check(&format!("flips n={n} q={q} bits={bits:?} perms={count}"), &p, &perms, bits);
        }
    }
}

/// An exhaustive set: every sign flip of 9 rows.
#[test]
fn exhaustive_sign_flips_on_tables() {
    let p = problem(9, 40, 2, 1, StatKind::T, None, 4);
    let perms = PermSet::generate(9, PermKind::SignFlip, &[0; 9], 0, 1).unwrap();
    assert!(perms.exhaustive && perms.len() == 512);
    check("exhaustive", &p, &perms, None);
}

/// Relabelings of designs whose Q has 2, 3 or 4 distinct rows (subset tables), within
/// exchangeability blocks too; a Q of more distinct rows, and sign flips with
/// relabelings, run the matrix product.
#[test]
fn relabelings_of_few_groups_run_on_subset_tables() {
    for &(n, v, q, groups, bits) in &[
        (13usize, 90usize, 2usize, 2usize, None),
        (30, 70, 2, 3, Some(3)),
        (21, 33, 3, 4, Some(8)),
        (58, 100, 2, 2, None),
    ] {
        let p = problem(n, v, q, 1, StatKind::T, Some(groups), n as u64);
        let labels: Vec<u32> = (0..n as u32).collect();
        let perms = PermSet::generate(n, PermKind::Permute, &labels, 200, 7).unwrap();
        check(&format!("relabel n={n} groups={groups}"), &p, &perms, bits);
        let of_row: Vec<i64> = (0..n as i64).map(|i| 1 + i % 2).collect();
        let blocks = Blocks::from_labels(&of_row, false).unwrap();
        let perms = PermSet::generate_in_blocks(n, PermKind::Permute, &labels, &blocks, 100, 2).unwrap();
        check(&format!("relabel in blocks n={n} groups={groups}"), &p, &perms, bits);
    }
    let mut eng = CpuEngine::new();
    let p = problem(20, 10, 2, 1, StatKind::T, Some(5), 1);
    eng.prepare(&p).unwrap();
    let labels: Vec<u32> = (0..20).collect();
    let perms = PermSet::generate(20, PermKind::Permute, &labels, 50, 1).unwrap();
    assert!(!eng.uses_tables(&perms), "five distinct rows of Q run the matrix product");
    let p = problem(20, 10, 2, 1, StatKind::T, Some(2), 1);
    eng.prepare(&p).unwrap();
    let perms = PermSet::generate(20, PermKind::Both, &labels, 50, 1).unwrap();
    assert!(!eng.uses_tables(&perms), "sign flips with relabelings run the matrix product");
    eng.set_product(Product::Gemm);
    let perms = PermSet::generate(20, PermKind::SignFlip, &labels, 50, 1).unwrap();
    assert!(!eng.uses_tables(&perms), "Product::Gemm runs the matrix product");
}

/// The tables give every batch split the same sums (the block size depends on the
/// problem alone): a whole batch equals the same permutations in pieces, bit for bit.
#[test]
fn table_batches_are_independent() {
    let p = problem(31, 300, 2, 1, StatKind::T, None, 9);
    let perms = PermSet::generate(31, PermKind::SignFlip, &[0; 31], 500, 1).unwrap();
    let mut eng = CpuEngine::new();
    eng.prepare(&p).unwrap();
    let obs = vec![0.5f32; 300];
    let whole = eng.run_batch(&perms, 0..500, Some(&obs), None).unwrap();
    let a = eng.run_batch(&perms, 0..37, Some(&obs), None).unwrap();
    let b = eng.run_batch(&perms, 37..500, Some(&obs), None).unwrap();
    let joined: Vec<f32> = a.max_stat.iter().chain(&b.max_stat).copied().collect();
    assert_eq!(whole.max_stat, joined);
    let sum: Vec<u32> = a.exceed.iter().zip(&b.exceed).map(|(x, y)| x + y).collect();
    assert_eq!(whole.exceed, sum);
}

/// `Product::Auto` takes the tables only where they stay in L1 with blocks of 4 rows or
/// more (the driving study's N = 58, q = 2), and the matrix product for large N, where
/// the tables would spill to L2; `Product::Table` takes them anyway.
#[test]
fn auto_takes_the_tables_only_where_they_pay_off() {
    let flips = |n: usize| PermSet::generate(n, PermKind::SignFlip, &vec![0; n], 20, 1).unwrap();
    for (n, q, auto) in [(58usize, 2usize, true), (100, 1, true), (500, 2, false), (5000, 2, false)] {
        let p = problem(n, 3, q, 1, StatKind::T, None, 1);
        let mut eng = CpuEngine::new();
        eng.prepare(&p).unwrap();
        assert_eq!(eng.uses_tables(&flips(n)), auto, "auto, n={n} q={q}");
        eng.set_product(Product::Table);
        assert!(eng.uses_tables(&flips(n)), "table, n={n} q={q}");
    }
}
