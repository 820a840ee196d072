//! The table-driven product for sign flips (`glm_stat_table.wgsl`) against its CPU port, the
//! matrix product (glm_stat's CPU port), an f64 reference, and the CPU engine.
//!
//! Tolerances. Shader and port add the same f32 terms in the same order (u equal bit for
//! bit); the maps may still differ by the driver's few-ULP `/` and `sqrt` and a contracted
//! `u*u + acc` in the epilogue, as for glm_stat (tests/it/gpu_twins.rs). Table against
//! matrix product: both sum the N rounded products Q_mk E_mv, the matrix path in a chain of
//! fused multiply-adds, the table path in blocks of b and then block by block, so each u
//! errs by at most γ_{N+1} Σ_m |Q_mk E_mv| (γ_n ≈ n 2^-24; tested in the shaders crate
//! against an f64 sum) and the two by twice that: for N <= 100, |E| ~ 1 and orthonormal
//! Q, under 1e-5 of sqrt(ss), and through the statistic (|t| up to ~30 here, RSS not below
//! a few percent of ss) well within 1e-4 * max(|T|, 1), the bound gpu_twins uses for the
//! same f32-versus-f64 question. Exceedance counts may then differ only where a T lies in
//! that band around the observed value (counted and bounded).
//!
//! Without an adapter the GPU tests skip (print why) unless VOXFLIP_REQUIRE_GPU=1; the
//! port-against-port test needs no adapter.
use crate::common::Tolerance;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use voxflip_engines::cpu::CpuEngine;
use voxflip_engines::gpu::GpuEngine;
use voxflip_engines::Product;
use voxflip_shaders::cpu::glm_stat::glm_stat;
use voxflip_shaders::cpu::glm_stat_table::glm_stat_table;
use voxflip_shaders::glm_stat::{FLAG_MAPS, FLAG_OBSERVED, KIND_F, KIND_T};
use voxflip_shaders::glm_stat_table::{best_bits, MAX_BITS, TP};
use voxflip_shaders::keys::value_of;
use voxflip_shaders::GlmParams;
use voxflip_stats::{statistic, ContrastProblem, PermKind, PermSet, StatKind};

/// See the module docs.
const TOL: Tolerance = Tolerance::rel(1e-4);

fn tol(x: f32) -> f32 {
    TOL.band(x)
}

fn gpu() -> Option<GpuEngine> {
    crate::common::gpu_engine(module_path!())
}

/// A random problem with an orthonormal Q (|u|^2 <= ss as for real data), an all-zero voxel
/// (ss = 0) and one close to span(Q) (|t| ~ 30), as in gpu_twins.
fn problem(rng: &mut ChaCha8Rng, n: usize, v: usize, q: usize, s: usize, kind: StatKind) -> ContrastProblem {
    let mut qb = vec![0.0f64; n * q];
    for k in 0..q {
        let mut col: Vec<f64> = (0..n).map(|_| rng.random::<f64>() - 0.5).collect();
        for _ in 0..2 {
            for kp in 0..k {
                let d: f64 = (0..n).map(|i| col[i] * qb[i * q + kp]).sum();
                for i in 0..n {
                    col[i] -= d * qb[i * q + kp];
                }
            }
        }
        let norm = col.iter().map(|x| x * x).sum::<f64>().sqrt();
        for i in 0..n {
            qb[i * q + k] = col[i] / norm;
        }
    }
    let mut e: Vec<f32> = (0..n * v).map(|_| (rng.random::<f32>() - 0.5) * 3.0 + 0.3).collect();
    if v > 2 {
        for i in 0..n {
            e[i * v + 1] = 0.0;
            e[i * v + 2] = qb[i * q] as f32 * 2.0 + (rng.random::<f32>() - 0.5) * 0.2;
        }
    }
    let ss: Vec<f32> = (0..v).map(|c| (0..n).map(|i| (e[i * v + c] as f64).powi(2)).sum::<f64>() as f32).collect();
    ContrastProblem {
        n,
        v,
        q,
        s,
        kind,
        dof: (n - q).max(1) as f32,
        qbasis: qb.iter().map(|&x| x as f32).collect(),
        e,
        ss,
        voxel_qbasis: None,
    }
}

fn flips(n: usize, count: usize, seed: u64) -> PermSet {
    let labels: Vec<u32> = (0..n as u32).collect();
    PermSet::generate(n, PermKind::SignFlip, &labels, count, seed).unwrap()
}

/// One shader call: problem shape, permutations, and the block size.
struct Case {
    n: usize,
    vc: usize,
    perms: usize,
    q: usize,
    s: usize,
    kind: StatKind,
    bits: u32,
}

fn cases() -> Vec<Case> {
    let t = StatKind::T;
    let f = StatKind::F;
    let c = |n, vc, perms, q, s, kind, bits| Case { n, vc, perms, q, s, kind, bits };
    let mut out = vec![
        // The driving study's shape with the engine's block size; N = 58 is no multiple of 4.
        c(58, 150, 300, 2, 1, t, best_bits(58)),
        // The edges of b: 1 (a signed sum, one row per block) and the largest.
        c(58, 70, 130, 2, 1, t, 1),
        c(58, 70, 130, 2, 1, t, MAX_BITS),
        // F with q and s up to 6, N not a multiple of b, several words per permutation.
        c(75, 90, 140, 6, 6, f, 5),
        c(40, 65, 40, 3, 2, f, 3),
        // One voxel; fewer permutations than a tile; N below b (one padded block).
        c(33, 1, 7, 1, 1, t, 4),
        c(5, 64, 3, 2, 1, t, MAX_BITS),
        c(1, 9, 2, 1, 1, t, 2),
    ];
    for q in 1..=6 {
        out.push(c(31 + 7 * q, 67, 129, q, 1, t, 2 + (q as u32 % (MAX_BITS - 1))));
    }
    out
}

/// The batch's words with the observed values: the identity's map (permutation 0).
fn setup(rng: &mut ChaCha8Rng, c: &Case, seed: u64) -> (ContrastProblem, PermSet, GlmParams, Vec<f32>) {
    let pb = problem(rng, c.n, c.vc, c.q, c.s, c.kind);
    let ps = flips(c.n, c.perms, seed);
    let params = GlmParams {
        n: c.n as u32,
        q: c.q as u32,
        s: c.s as u32,
        kind: if c.kind == StatKind::T { KIND_T } else { KIND_F },
        vc: c.vc as u32,
        n_perm: ps.len() as u32,
        perm_offset: 0,
        wpp: ps.words_per_perm as u32,
        flags: FLAG_OBSERVED | FLAG_MAPS,
        dof: pb.dof,
        inv_s: GlmParams::inv_s_of(c.s as u32),
        ..Default::default()
    };
    let mut vox = pb.ss.clone();
    let obs = reference(&pb, &ps, 0..1);
    vox.extend_from_slice(&obs);
    (pb, ps, params, vox)
}

/// u in f64 from the sign vectors, then voxflip_stats::statistic: independent of both paths.
fn reference(pb: &ContrastProblem, ps: &PermSet, range: std::ops::Range<usize>) -> Vec<f32> {
    let (n, v, q) = (pb.n, pb.v, pb.q);
    let mut out = Vec::with_capacity(range.len() * v);
    let mut u = vec![0.0f32; q];
    for j in range {
        for vox in 0..v {
            for (k, uk) in u.iter_mut().enumerate() {
                let acc: f64 =
                    (0..n).map(|m| ps.sign(j, m) as f64 * pb.qbasis[m * q + k] as f64 * pb.e[m * v + vox] as f64).sum();
                *uk = acc as f32;
            }
            out.push(statistic(pb.kind, &u, pb.s, pb.ss[vox], pb.dof));
        }
    }
    out
}

/// Maps within `tol` of `want`, maxima within it too; returns the worst relative difference.
fn check_maps(label: &str, got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "{label}");
    let mut worst = 0.0f32;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol(w), "{label}: value {i}: {g} vs {w}");
        worst = worst.max((g - w).abs() / w.abs().max(1.0));
    }
    worst
}

fn check_max(label: &str, got: &[f32], maps: &[f32], v: usize) {
    for (j, &g) in got.iter().enumerate() {
        let w = maps[j * v..(j + 1) * v].iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        assert!(g == w || (g - w).abs() <= tol(w), "{label}: max of perm {j}: {g} vs {w}");
    }
}

/// Counts may differ from exact ones only where some T lies within tol of observed.
fn check_counts(label: &str, counts: &[u32], maps: &[f32], obs: &[f32], v: usize) {
    let perms = maps.len() / v.max(1);
    for x in 0..v {
        let (mut lo, mut hi) = (0u32, 0u32);
        for p in 0..perms {
            let t = maps[p * v + x];
            lo += (t > obs[x] + tol(obs[x])) as u32;
            hi += (t >= obs[x] - tol(obs[x])) as u32;
        }
        assert!(lo <= counts[x] && counts[x] <= hi, "{label}: count at voxel {x} = {} outside [{lo}, {hi}]", counts[x]);
    }
}

#[test]
fn table_port_matches_the_matrix_port_and_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (ci, c) in cases().iter().enumerate() {
        let (pb, ps, params, vox) = setup(&mut rng, c, 100 + ci as u64);
        let words = ps.all_flip_words();
        let (np, vc) = (ps.len(), c.vc);
        let (mut mt, mut ct, mut pt) = (vec![0u32; np], vec![0u32; vc], vec![0f32; np * vc]);
        glm_stat_table(&params, c.bits, words, &pb.qbasis, &pb.e, &vox, &mut mt, &mut ct, &mut pt);
        let (mut mg, mut cg, mut pg) = (vec![0u32; np], vec![0u32; vc], vec![0f32; np * vc]);
        glm_stat(&params, words, &pb.qbasis, &pb.e, &vox, &mut mg, &mut cg, &mut pg);
        let label = format!("case {ci} (n {}, q {}, bits {})", c.n, c.q, c.bits);
        let w1 = check_maps(&format!("{label}, table port vs matrix port"), &pt, &pg);
        let want = reference(&pb, &ps, 0..np);
        let w2 = check_maps(&format!("{label}, table port vs f64 reference"), &pt, &want);
        let maxima: Vec<f32> = mt.iter().map(|&k| value_of(k)).collect();
        check_max(&label, &maxima, &want, vc);
        check_counts(&label, &ct, &want, &vox[vc..], vc);
        println!("{label}: worst relative difference {w1:e} to the matrix port, {w2:e} to the reference");
    }
}

#[test]
fn table_shader_matches_its_port() {
    let Some(mut g) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    for (ci, c) in cases().iter().enumerate() {
        let (pb, ps, mut params, vox) = setup(&mut rng, c, 200 + ci as u64);
        let words = ps.all_flip_words();
        let np = ps.len();
        // A dispatch that starts inside the batch (permutation offset, maps row base): the
        // second half of the permutations, and maxima that start non-zero where the twin's do.
        let off = np / 2;
        params.perm_offset = off as u32;
        params.n_perm = (np - off) as u32;
        params.maps_base = off as u32;
        let vc = c.vc;
        let init: Vec<u32> = (0..np).map(|j| if j % 5 == 0 { 0x8000_0000 | 7 } else { 0 }).collect();
        let (mut mg, mut cg, mut pg) = (init.clone(), vec![3u32; vc], vec![0f32; (np - off) * vc]);
        g.run_glm_stat_table(&params, c.bits, words, &pb.qbasis, &pb.e, &vox, &mut mg, &mut cg, &mut pg).unwrap();
        let (mut mc, mut cc, mut pc) = (init, vec![3u32; vc], vec![0f32; (np - off) * vc]);
        glm_stat_table(&params, c.bits, words, &pb.qbasis, &pb.e, &vox, &mut mc, &mut cc, &mut pc);
        let label = format!("case {ci} (n {}, q {}, bits {}, {} perms)", c.n, c.q, c.bits, np - off);
        let mut exact = 0;
        for (i, (&a, &b)) in pg.iter().zip(&pc).enumerate() {
            assert!((a - b).abs() <= tol(b), "{label}: map value {i}: gpu {a} vs cpu {b}");
            exact += (a.to_bits() == b.to_bits()) as usize;
        }
        for (j, (&a, &b)) in mg.iter().zip(&mc).enumerate() {
            let (a, b) = (value_of(a), value_of(b));
            assert!(a == b || (a - b).abs() <= tol(b), "{label}: max of perm {j}: gpu {a} vs cpu {b}");
        }
        // Counts (both start at 3): the port's, up to the pairs within the band.
        let added: Vec<u32> = cg.iter().map(|c| c - 3).collect();
        check_counts(&label, &added, &pc, &vox[vc..], vc);
        let diff: u32 = cg.iter().zip(&cc).map(|(a, b)| a.abs_diff(*b)).sum();
        println!("{label}: {exact} of {} map values bit-equal to the port, counts differ by {diff}", pg.len());
    }
}

#[test]
fn table_shader_leaves_what_it_does_not_compute() {
    // Without FLAG_MAPS and FLAG_OBSERVED: maxima only, counts and maps untouched.
    let Some(mut g) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let c = Case { n: 20, vc: 10, perms: 9, q: 2, s: 1, kind: StatKind::T, bits: 4 };
    let (pb, ps, mut params, vox) = setup(&mut rng, &c, 5);
    params.flags = 0;
    let words = ps.all_flip_words();
    let (mut mg, mut cg, mut pg) = (vec![0u32; 9], vec![0u32; 10], vec![7.0f32]);
    g.run_glm_stat_table(&params, 4, words, &pb.qbasis, &pb.e, &vox, &mut mg, &mut cg, &mut pg).unwrap();
    let (mut mc, mut cc, mut pc) = (vec![0u32; 9], vec![0u32; 10], Vec::new());
    glm_stat_table(&params, 4, words, &pb.qbasis, &pb.e, &vox, &mut mc, &mut cc, &mut pc);
    for (a, b) in mg.iter().zip(&mc) {
        let (a, b) = (value_of(*a), value_of(*b));
        assert!((a - b).abs() <= tol(b));
    }
    assert!(cg.iter().all(|&c| c == 0));
    assert_eq!(pg, vec![7.0]);
    // Row sources and bits outside 1..=MAX_BITS are refused.
    assert!(g.run_glm_stat_table(&params, 0, words, &pb.qbasis, &pb.e, &vox, &mut mg, &mut cg, &mut pg).is_err());
    let no_flips = GlmParams { wpp: 0, ..params };
    assert!(g.run_glm_stat_table(&no_flips, 4, words, &pb.qbasis, &pb.e, &vox, &mut mg, &mut cg, &mut pg).is_err());
}

/// All of `perms` through `run` in batches of `batch`: maxima, counts, maps.
fn run_all(
    label: &str,
    perms: &PermSet,
    v: usize,
    batch: usize,
    observed: &[f32],
    mut run: impl FnMut(std::ops::Range<usize>, &mut [f32]) -> voxflip_engines::BatchResult,
) -> (Vec<f32>, Vec<u32>, Vec<f32>) {
    let (mut maxima, mut counts, mut maps) = (Vec::new(), vec![0u32; v], vec![0f32; perms.len() * v]);
    let mut start = 0;
    while start < perms.len() {
        let end = (start + batch).min(perms.len());
        let r = run(start..end, &mut maps[start * v..end * v]);
        assert_eq!(r.max_stat.len(), end - start, "{label}");
        maxima.extend(r.max_stat);
        for (c, x) in counts.iter_mut().zip(&r.exceed) {
            *c += x;
        }
        start = end;
    }
    assert_eq!(observed.len(), v);
    (maxima, counts, maps)
}

#[test]
fn engine_table_path_matches_the_matrix_path_and_the_cpu_engine() {
    let Some(mut g) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    // (n, v, q, s, kind, permutations, batch, chunk): the driving study's shape in small, an
    // exhaustive set (2^9 = 512 flips), F with q = 6, one voxel, fewer flips than a tile.
    let setups = [
        (58, 300, 2, 1, StatKind::T, 400, 150, 128),
        (9, 130, 2, 1, StatKind::T, 600, 200, 64),
        (45, 200, 6, 3, StatKind::F, 150, 150, 200),
        (21, 1, 1, 1, StatKind::T, 50, 50, 64),
        (30, 70, 3, 3, StatKind::F, TP as usize - 30, 512, 64),
    ];
    let mut cpu = CpuEngine::new();
    for (si, &(n, v, q, s, kind, np, batch, chunk)) in setups.iter().enumerate() {
        let pb = problem(&mut rng, n, v, q, s, kind);
        let ps = flips(n, np, 300 + si as u64);
        if si == 1 {
            assert!(ps.exhaustive && ps.len() == 512, "setup 1 must be the exhaustive set");
        }
        let want = reference(&pb, &ps, 0..ps.len());
        let observed = want[..v].to_vec();
        g.tuning.chunk_voxels = Some(chunk);
        g.prepare(&pb).unwrap();
        let mut gpu_runs = Vec::new();
        for product in [Product::Table, Product::Gemm] {
            g.set_product(product);
            assert_eq!(g.table_bits(&ps).is_some(), product == Product::Table);
            let label = format!("setup {si}, GPU {product:?}");
            let got = run_all(&label, &ps, v, batch, &observed, |r, m| {
                g.run_batch(&ps, r, Some(&observed), Some(m)).unwrap()
            });
            let worst = check_maps(&label, &got.2, &want);
            check_max(&label, &got.0, &want, v);
            check_counts(&label, &got.1, &want, &observed, v);
            // Without maps: the same maxima.
            let r = g.run_batch(&ps, 0..ps.len().min(40), Some(&observed), None).unwrap();
            for (a, b) in r.max_stat.iter().zip(&got.0) {
                assert!((a - b).abs() <= tol(*b), "{label}: maxima without maps");
            }
            println!("{label}: worst relative difference {worst:e} to the reference");
            gpu_runs.push(got);
        }
        let (table, gemm) = (&gpu_runs[0], &gpu_runs[1]);
        check_maps(&format!("setup {si}: GPU table vs GPU gemm"), &table.2, &gemm.2);
        for product in [Product::Table, Product::Gemm] {
            cpu.set_product(product);
            cpu.prepare(&pb).unwrap();
            let label = format!("setup {si}, CPU {product:?}");
            let got = run_all(&label, &ps, v, batch, &observed, |r, m| {
                cpu.run_batch(&ps, r, Some(&observed), Some(m)).unwrap()
            });
            check_maps(&format!("{label} vs GPU table"), &got.2, &table.2);
            for (j, (a, b)) in got.0.iter().zip(&table.0).enumerate() {
                assert!((a - b).abs() <= tol(*b), "{label}: max of perm {j}: cpu {a} vs GPU table {b}");
            }
            check_counts(&label, &got.1, &want, &observed, v);
        }
    }
    g.tuning = Default::default();
}

#[test]
fn engine_runs_the_matrix_product_where_tables_do_not_apply() {
    let Some(mut g) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    let pb = problem(&mut rng, 20, 70, 2, 1, StatKind::T);
    g.prepare(&pb).unwrap();
    let labels: Vec<u32> = (0..20).collect();
    let permute = PermSet::generate(20, PermKind::Permute, &labels, 30, 1).unwrap();
    let both = PermSet::generate(20, PermKind::Both, &labels, 30, 1).unwrap();
    let signs = flips(20, 30, 1);
    // Auto: the tables on hardware; on software adapters (lavapipe) the matrix product.
    g.set_product(Product::Auto);
    assert_eq!(g.table_bits(&signs), (!g.is_software()).then_some(best_bits(20)));
    g.set_product(Product::Table);
    assert_eq!(g.table_bits(&signs), Some(best_bits(20)));
    g.set_product(Product::Table);
    assert!(g.table_bits(&permute).is_none() && g.table_bits(&both).is_none());
    // Table asked for on relabelings: the matrix product runs, and equals the reference.
    for ps in [&permute, &both] {
        let want: Vec<f32> = {
            let (n, v, q) = (pb.n, pb.v, pb.q);
            let mut a = vec![0f32; q * n];
            let mut out = Vec::new();
            for j in 0..ps.len() {
                for m in 0..n {
                    for k in 0..q {
                        a[k * n + m] = ps.sign(j, m) * pb.qbasis[ps.source(j, m) * q + k];
                    }
                }
                for x in 0..v {
                    let u: Vec<f32> = (0..q)
                        .map(|k| (0..n).map(|m| a[k * n + m] as f64 * pb.e[m * v + x] as f64).sum::<f64>() as f32)
                        .collect();
                    out.push(statistic(pb.kind, &u, pb.s, pb.ss[x], pb.dof));
                }
            }
            out
        };
        let mut maps = vec![0f32; ps.len() * pb.v];
        g.run_batch(ps, 0..ps.len(), None, Some(&mut maps)).unwrap();
        check_maps("relabelings with Product::Table", &maps, &want);
    }
    assert!(g.describe().contains("table-driven product"));
    g.set_product(Product::Gemm);
    assert!(!g.describe().contains("table-driven product"));
}

/// The table path against the matrix path on the driving study's shape (N = 58, q = 2, the
/// 2 mm brain's 228,000 voxels; VOXFLIP_TIME_VOXELS, VOXFLIP_TIME_PERMS change them), each
/// timed best of three after a warm-up; VOXFLIP_GPU_TIMESTAMPS=1 adds the passes' GPU time.
/// Run with `cargo test --release --test it time_table -- --ignored --nocapture`.
#[test]
#[ignore]
fn time_table_against_matrix_sign_flips_n58_q2() {
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|s| s.parse().ok()).unwrap_or(d);
    let (n, q) = (58, 2);
    let v = env("VOXFLIP_TIME_VOXELS", 228_000);
    let count = env("VOXFLIP_TIME_PERMS", 1000);
    let timestamps = std::env::var("VOXFLIP_GPU_TIMESTAMPS").as_deref() == Ok("1");
    let opts = voxflip_engines::GpuOptions { timestamps, ..Default::default() };
    let Some(mut g) = crate::common::gpu_engine_with(module_path!(), &opts) else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let pb = problem(&mut rng, n, v, q, 1, StatKind::T);
    let ps = flips(n, count, 2);
    let observed = vec![0.5f32; v];
    let flops = pb.flops_per_perm() * ps.len() as f64;
    g.prepare(&pb).unwrap();
    let mut best = Vec::new();
    for product in [Product::Gemm, Product::Table] {
        g.set_product(product);
        let batch = g.preferred_batch();
        g.run_batch(&ps, 0..batch.min(ps.len()), Some(&observed), None).unwrap();
        let (mut secs, mut gpu_secs, mut maxima) = (f64::INFINITY, None, Vec::new());
        for _ in 0..3 {
            let k0 = g.kernel_seconds();
            let t0 = std::time::Instant::now();
            let got =
                run_all("timing", &ps, v, batch, &observed, |r, _| g.run_batch(&ps, r, Some(&observed), None).unwrap());
            let s = t0.elapsed().as_secs_f64();
            if s < secs {
                secs = s;
                gpu_secs = g.kernel_seconds().zip(k0).map(|(a, b)| a - b);
            }
            maxima = got.0;
        }
        println!(
            "{product:?} ({}): {count} flips x {v} voxels in {secs:.3} s best of 3 ({:.1} effective GFLOP/s){}",
            g.describe(),
            flops / secs / 1e9,
            gpu_secs.map_or(String::new(), |k| format!(", passes {k:.4} s on the GPU"))
        );
        best.push((secs, maxima));
    }
    let worst = best[1].1.iter().zip(&best[0].1).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0f32, f32::max);
    println!("table / matrix: {:.2}x faster; maxima differ by at most {worst:e} (relative)", best[0].0 / best[1].0);
    assert!(worst <= TOL.rel);
}
