//! GPU stages against their CPU twins, and the GPU engine against a plain reference.
//!
//! Tolerances. The GPU accumulates each u_k in f32 over N terms; the twin does the same sums
//! in the same order with fused multiply-adds, but a driver may evaluate WGSL's `/` and
//! `sqrt` a few ULP off (Vulkan allows 2.5 ULP for division, inverse-sqrt-based sqrt) and
//! may contract the epilogue's `u*u + acc` into an FMA. Against the f64 reference the f32 sum
//! itself errs by about sqrt(N) * 2^-24 * sum_m |A_km E_mv| in u, which for N <= 100 and
//! statistics of order 1 stays well under 1e-4 of max(|T|, 1). So maps and maxima must agree
//! within 1e-4 * max(|T|, 1); exceedance counts may differ only where some T_jv lies within
//! that band of observed_v (the tests count those voxels and bound the difference by them).
//!
//! Without an adapter the tests skip (print why) unless VOXFLIP_REQUIRE_GPU=1. Software
//! adapters (lavapipe) are allowed here.
use crate::common::Tolerance;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use voxflip_engines::gpu::{AdapterChoice, GpuEngine};
use voxflip_engines::{GlmKernel, GpuOptions};
use voxflip_shaders::cpu::glm_stat as twin;
use voxflip_shaders::cpu::glm_stat_wide::glm_stat_wide;
use voxflip_shaders::glm_stat::{wide, FLAG_MAPS, FLAG_OBSERVED, FLAG_SRC, KIND_F, KIND_T};
use voxflip_shaders::keys::{key_of, value_of};
use voxflip_shaders::GlmParams;
use voxflip_stats::{statistic, ContrastProblem, PermKind, PermSet, StatKind};

/// See the module docs: f32 sums of N <= 100 terms and a driver's few-ULP `/` and `sqrt`.
const TOL: Tolerance = Tolerance::rel(1e-4);
const RTOL: f32 = TOL.rel;

fn tol(x: f32) -> f32 {
    TOL.band(x)
}

fn gpu() -> Option<GpuEngine> {
    crate::common::gpu_engine(module_path!())
}

/// Random problem with an orthonormal Q (so |u|^2 <= ss as for real data) and E with a few
/// edge-case voxels: an all-zero column (ss = 0) and a column close to span(Q) (a large
/// statistic, |t| ~ 30; not inside the 1e-6 clamp, where RSS is rounding noise and no two
/// summation orders can agree to 1e-4).
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

fn perm_set(n: usize, kind: PermKind, count: usize, seed: u64) -> PermSet {
    let labels: Vec<u32> = (0..n as u32).collect();
    PermSet::generate(n, kind, &labels, count, seed).unwrap()
}

/// The batch's perm words as the engine lays them out: [signs | sources].
fn perm_words(p: &PermSet) -> (Vec<u32>, u32, bool) {
    let mut w = p.all_flip_words().to_vec();
    let base = w.len() as u32;
    let has_src = !p.all_src().is_empty();
    w.extend_from_slice(p.all_src());
    (w, base, has_src)
}

/// Compare the device result with the twin's: maps, maxima, and counts within the band.
fn check_close(label: &str, maps_gpu: &[f32], maps_cpu: &[f32], max_gpu: &[u32], max_cpu: &[u32]) {
    let mut worst = 0.0f32;
    for (i, (&g, &c)) in maps_gpu.iter().zip(maps_cpu).enumerate() {
        assert!((g - c).abs() <= tol(c), "{label}: map value {i}: gpu {g} vs cpu {c}");
        worst = worst.max((g - c).abs() / c.abs().max(1.0));
    }
    for (j, (&g, &c)) in max_gpu.iter().zip(max_cpu).enumerate() {
        let (g, c) = (value_of(g), value_of(c));
        assert!(g == c || (g - c).abs() <= tol(c), "{label}: max of perm {j}: gpu {g} vs cpu {c}");
    }
    println!("{label}: worst relative map difference {worst:e}");
}

/// Counts may differ from the band-free ones only where T is within tol of observed.
fn check_counts(label: &str, counts: &[u32], maps: &[f32], obs: &[f32], vc: usize, perms: Range) {
    let mut ambiguous = 0;
    for v in 0..vc {
        let (mut lo, mut hi) = (0u32, 0u32);
        for p in perms.clone() {
            let t = maps[p * vc + v];
            if t > obs[v] + tol(obs[v]) {
                lo += 1;
            }
            if t >= obs[v] - tol(obs[v]) {
                hi += 1;
            }
        }
        ambiguous += (hi - lo) as usize;
        assert!(lo <= counts[v] && counts[v] <= hi, "{label}: count at voxel {v} = {} outside [{lo}, {hi}]", counts[v]);
    }
    println!("{label}: {ambiguous} (perm, voxel) pairs within tolerance of observed");
}
type Range = std::ops::Range<usize>;

struct Case {
    n: usize,
    vc: usize,
    perms: usize,
    q: usize,
    s: usize,
    kind: StatKind,
    pk: PermKind,
}

#[test]
fn glm_stat_matches_twin() {
    let Some(mut g) = gpu() else { return };
    println!("adapter: {}", g.describe());
    let cases = [
        // N, V not multiples of the tiles (KT = 32, TV = 64), perms not a multiple of TP = 32.
        Case { n: 37, vc: 150, perms: 45, q: 1, s: 1, kind: StatKind::T, pk: PermKind::SignFlip },
        Case { n: 64, vc: 64, perms: 32, q: 2, s: 1, kind: StatKind::T, pk: PermKind::Permute },
        // One voxel, fewer permutations than a tile, F with s < q.
        Case { n: 5, vc: 1, perms: 3, q: 3, s: 2, kind: StatKind::F, pk: PermKind::Both },
        Case { n: 100, vc: 300, perms: 70, q: 4, s: 3, kind: StatKind::F, pk: PermKind::Both },
        Case { n: 33, vc: 129, perms: 33, q: 2, s: 2, kind: StatKind::F, pk: PermKind::SignFlip },
        Case { n: 40, vc: 200, perms: 65, q: 3, s: 1, kind: StatKind::T, pk: PermKind::Permute },
        // The Wide kernel's tiles (TP = 128, TV = 64): more than one permutation tile with a
        // partial last one, N a multiple of KT (no padded rows) and one row past it, q = 6,
        // and permutations with sources only (sign words absent).
        Case { n: 64, vc: 130, perms: 300, q: 6, s: 4, kind: StatKind::F, pk: PermKind::SignFlip },
        Case { n: 65, vc: 67, perms: 129, q: 5, s: 1, kind: StatKind::T, pk: PermKind::Both },
        Case { n: 31, vc: 65, perms: 140, q: 2, s: 1, kind: StatKind::T, pk: PermKind::Permute },
        Case { n: 1, vc: 9, perms: 2, q: 1, s: 1, kind: StatKind::T, pk: PermKind::SignFlip },
    ];
    for kernel in GlmKernel::ALL {
        g.set_kernel(kernel).unwrap();
        println!("kernel: {kernel:?}");
        twin_cases(&mut g, &cases);
    }
    // The Wide kernels compiled without wgpu's runtime checks.
    g.set_unchecked(true).unwrap();
    for kernel in [GlmKernel::Wide, GlmKernel::Wide128] {
        g.set_kernel(kernel).unwrap();
        println!("kernel: {kernel:?}, unchecked");
        twin_cases(&mut g, &cases);
    }
}

fn twin_cases(g: &mut GpuEngine, cases: &[Case]) {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (ci, c) in cases.iter().enumerate() {
        let pb = problem(&mut rng, c.n, c.vc, c.q, c.s, c.kind);
        let ps = perm_set(c.n, c.pk, c.perms, 100 + ci as u64);
        let np = ps.len();
        let (words, src_base, has_src) = perm_words(&ps);
        let observed: Vec<f32> = (0..c.vc).map(|_| (rng.random::<f32>() - 0.5) * 4.0).collect();
        let mut vox = pb.ss.clone();
        vox.extend_from_slice(&observed);
        // Two dispatches per case: the whole set, then a sub-range with offsets, to check
        // perm_offset / maps_base addressing.
        for (pa, pz) in [(0, np), (np / 3, np)] {
            let mut flags = FLAG_OBSERVED | FLAG_MAPS;
            if has_src {
                flags |= FLAG_SRC;
            }
            let params = GlmParams {
                n: c.n as u32,
                q: c.q as u32,
                s: c.s as u32,
                kind: if c.kind == StatKind::T { KIND_T } else { KIND_F },
                vc: c.vc as u32,
                n_perm: (pz - pa) as u32,
                perm_offset: pa as u32,
                wpp: ps.words_per_perm as u32,
                src_base,
                flags,
                maps_base: pa as u32,
                dof: pb.dof,
                inv_s: GlmParams::inv_s_of(c.s as u32),
                ..Default::default()
            };
            // Nonzero initial maxima and counts: the stage must combine, not overwrite.
            let init_max: Vec<u32> = (0..np).map(|j| if j % 5 == 0 { key_of(1.5) } else { 0 }).collect();
            let init_counts: Vec<u32> = (0..c.vc).map(|v| (v % 3) as u32).collect();
            let (mut mg, mut cg, mut pg) = (init_max.clone(), init_counts.clone(), vec![0.0f32; (pz - pa) * c.vc]);
            let (mut mc, mut cc, mut pc) = (init_max.clone(), init_counts.clone(), vec![0.0f32; (pz - pa) * c.vc]);
            g.run_glm_stat(&params, &words, &pb.qbasis, &pb.e, &vox, &mut mg, &mut cg, &mut pg).unwrap();
            twin::glm_stat(&params, &words, &pb.qbasis, &pb.e, &vox, &mut mc, &mut cc, &mut pc);
            let label = format!("case {ci} perms {pa}..{pz}");
            // The Wide kernels' own port walks their tiles and equals the flat port exactly.
            let wg_p = match g.kernel() {
                GlmKernel::Wide => Some(wide::WG_P),
                GlmKernel::Wide128 => Some(wide::WG_P_128),
                _ => None,
            };
            if let Some(wg_p) = wg_p {
                let (mut mw, mut cw, mut pw) = (init_max.clone(), init_counts.clone(), vec![0.0f32; (pz - pa) * c.vc]);
                glm_stat_wide(wg_p, &params, &words, &pb.qbasis, &pb.e, &vox, &mut mw, &mut cw, &mut pw);
                assert_eq!((&mw, &cw), (&mc, &cc), "{label}: the wide port differs from the flat port");
                assert!(pw.iter().zip(&pc).all(|(a, b)| a.to_bits() == b.to_bits()), "{label}: wide port maps");
            }
            check_close(&label, &pg, &pc, &mg, &mc);
            let added: Vec<u32> = cg.iter().zip(&init_counts).map(|(a, b)| a - b).collect();
            check_counts(&label, &added, &pc, &observed, c.vc, 0..pz - pa);
            for j in 0..pa {
                assert_eq!(mg[j], init_max[j], "{label}: max of perm {j} outside the dispatch changed");
            }
            // The edge-case voxels: ss = 0 gives exactly 0.
            if c.vc > 2 {
                for p in 0..pz - pa {
                    assert_eq!(pg[p * c.vc + 1], 0.0, "{label}: zero voxel");
                }
            }
        }
    }
}

#[test]
fn glm_stat_without_maps_or_observed() {
    // The flags off: maps untouched (dummy binding), counts unchanged, maxima still right.
    let Some(mut g) = gpu() else { return };
    for kernel in GlmKernel::ALL {
        g.set_kernel(kernel).unwrap();
        without_maps_or_observed(&mut g);
    }
}

fn without_maps_or_observed(g: &mut GpuEngine) {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (n, vc, q) = (20, 70, 2);
    let pb = problem(&mut rng, n, vc, q, 1, StatKind::T);
    let ps = perm_set(n, PermKind::SignFlip, 40, 9);
    let (words, src_base, _) = perm_words(&ps);
    let mut vox = pb.ss.clone();
    vox.extend(std::iter::repeat_n(-1e9f32, vc));
    let params = GlmParams {
        n: n as u32,
        q: q as u32,
        s: 1,
        kind: 0,
        vc: vc as u32,
        n_perm: ps.len() as u32,
        perm_offset: 0,
        wpp: ps.words_per_perm as u32,
        src_base,
        flags: 0,
        maps_base: 0,
        dof: pb.dof,
        inv_s: 1.0,
        ..Default::default()
    };
    let (mut mg, mut cg, mut pg) = (vec![0u32; ps.len()], vec![0u32; vc], vec![7.0f32; 1]);
    let (mut mc, mut cc, mut pc) = (vec![0u32; ps.len()], vec![0u32; vc], vec![7.0f32; 1]);
    g.run_glm_stat(&params, &words, &pb.qbasis, &pb.e, &vox, &mut mg, &mut cg, &mut pg).unwrap();
    twin::glm_stat(&params, &words, &pb.qbasis, &pb.e, &vox, &mut mc, &mut cc, &mut pc);
    check_close("no flags", &[], &[], &mg, &mc);
    assert!(cg.iter().all(|&c| c == 0));
    assert_eq!(pg, vec![7.0]);
}

/// The plain reference: A_j by PermSet::coefficient_rows, u in f64, engine::statistic.
fn reference(pb: &ContrastProblem, ps: &PermSet) -> Vec<f32> {
    let (n, v, q) = (pb.n, pb.v, pb.q);
    let mut out = vec![0.0f32; ps.len() * v];
    let mut a = vec![0.0f32; q * n];
    let mut u = vec![0.0f32; q];
    for j in 0..ps.len() {
        if ps.words_per_perm > 0 {
            ps.coefficient_rows(j, &pb.qbasis, q, &mut a);
        } else {
            // PermSet::coefficient_rows indexes the (empty) sign words of a pure
            // permutation set and panics; build A_j = Q' P_j from the row sources directly.
            for m in 0..n {
                let src = ps.source(j, m);
                for k in 0..q {
                    a[k * n + m] = pb.qbasis[src * q + k];
                }
            }
        }
        for vox in 0..v {
            for k in 0..q {
                let mut acc = 0.0f64;
                for m in 0..n {
                    acc += a[k * n + m] as f64 * pb.e[m * v + vox] as f64;
                }
                u[k] = acc as f32;
            }
            out[j * v + vox] = statistic(pb.kind, &u, pb.s, pb.ss[vox], pb.dof);
        }
    }
    out
}

#[test]
fn engine_matches_reference_with_small_chunks() {
    let Some(mut g) = gpu() else { return };
    // The matrix kernels for sign flips too (the table path has its own: gpu_table_twins).
    g.set_product(voxflip_engines::Product::Gemm);
    for kernel in GlmKernel::ALL {
        g.set_kernel(kernel).unwrap();
        println!("kernel: {kernel:?}");
        engine_setups(&mut g);
    }
    g.set_unchecked(true).unwrap();
    g.set_kernel(GlmKernel::Wide128).unwrap();
    println!("kernel: Wide128, unchecked");
    engine_setups(&mut g);
}

fn engine_setups(g: &mut GpuEngine) {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let setups = [
        (58, 1000, 2, 1, StatKind::T, PermKind::SignFlip, 150, 97usize, 64usize),
        (45, 333, 3, 2, StatKind::F, PermKind::Both, 100, 128, 37),
        (30, 257, 1, 1, StatKind::T, PermKind::Permute, 90, 64, 90),
    ];
    for (si, &(n, v, q, s, kind, pk, np, chunk, batch)) in setups.iter().enumerate() {
        let pb = problem(&mut rng, n, v, q, s, kind);
        let ps = perm_set(n, pk, np, 40 + si as u64);
        g.tuning.chunk_voxels = Some(chunk);
        // Small dispatch bound so a batch is split into several dispatches and submissions
        // (for the Wide kernels, whose tiles hold 64 or 128 permutations, two tiles: the chunk
        // planner keeps one row of tiles over a chunk within the bound).
        let tp = if g.kernel().tile_perms() > 48 { 2 * g.kernel().tile_perms() as usize } else { 48 };
        g.tuning.max_macs_per_dispatch = Some((chunk * n * q * tp) as u64);
        // Maps read back in groups of 10 permutations per chunk.
        g.tuning.max_maps_bytes = Some((4 * chunk * 10) as u64);
        g.prepare(&pb).unwrap();
        assert_eq!(g.chunk_voxels(), chunk.min(v));
        assert!(g.chunks() > 1, "chunking must be exercised");
        let want = reference(&pb, &ps);
        let observed = want[..v].to_vec();
        let mut got_max = Vec::new();
        let mut got_counts = vec![0u32; v];
        let mut got_maps = vec![0.0f32; ps.len() * v];
        let mut start = 0;
        while start < ps.len() {
            let end = (start + batch).min(ps.len());
            let r = g.run_batch(&ps, start..end, Some(&observed), Some(&mut got_maps[start * v..end * v])).unwrap();
            assert_eq!(r.max_stat.len(), end - start);
            got_max.extend(r.max_stat);
            for (c, x) in got_counts.iter_mut().zip(&r.exceed) {
                *c += x;
            }
            start = end;
        }
        let label = format!("engine setup {si}");
        let mut worst = 0.0f32;
        for (i, (&gv, &w)) in got_maps.iter().zip(&want).enumerate() {
            assert!(
                (gv - w).abs() <= tol(w),
                "{label}: map {i} (perm {}, voxel {}): gpu {gv} vs ref {w}",
                i / v,
                i % v
            );
            worst = worst.max((gv - w).abs() / w.abs().max(1.0));
        }
        for j in 0..ps.len() {
            let wm = want[j * v..(j + 1) * v].iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            assert!((got_max[j] - wm).abs() <= tol(wm), "{label}: max of perm {j}: gpu {} vs ref {wm}", got_max[j]);
        }
        println!("{label}: worst relative difference {worst:e}");
        check_counts(&label, &got_counts, &want, &observed, v, 0..ps.len());

        // Without maps and observed: the same maxima, no counts.
        let r = g.run_batch(&ps, 0..ps.len().min(33), None, None).unwrap();
        assert!(r.exceed.is_empty());
        for (j, m) in r.max_stat.iter().enumerate() {
            assert!((m - got_max[j]).abs() <= tol(got_max[j]));
        }
    }
}

#[test]
fn engine_rejects_bad_calls_and_missing_adapters() {
    let e = GpuEngine::new(
        &AdapterChoice { name: Some("no-such-adapter-xyz".into()), allow_software: true },
        &GpuOptions::default(),
    );
    let msg = e.err().expect("no adapter should match").to_string();
    assert!(msg.contains("no GPU adapter found") && msg.contains("--backend cpu"), "{msg}");
    let Some(mut g) = gpu() else { return };
    let ps = perm_set(10, PermKind::SignFlip, 10, 1);
    assert!(g.run_batch(&ps, 0..2, None, None).is_err(), "run before prepare");
    // run_glm_stat refuses buffers smaller than its parameters address (here: the maps).
    let (words, src_base, _) = perm_words(&ps);
    let params = GlmParams {
        n: 10,
        q: 1,
        s: 1,
        kind: 0,
        vc: 8,
        n_perm: 10,
        perm_offset: 0,
        wpp: ps.words_per_perm as u32,
        src_base,
        flags: FLAG_MAPS,
        maps_base: 0,
        dof: 9.0,
        inv_s: 1.0,
        ..Default::default()
    };
    let (qb, e, vox) = (vec![0.1f32; 10], vec![1.0f32; 80], vec![1.0f32; 16]);
    let (mut mx, mut cnt, mut maps) = (vec![0u32; 10], vec![0u32; 8], vec![0.0f32; 79]);
    assert!(g.run_glm_stat(&params, &words, &qb, &e, &vox, &mut mx, &mut cnt, &mut maps).is_err());
    let mut maps = vec![0.0f32; 80];
    g.run_glm_stat(&params, &words, &qb, &e, &vox, &mut mx, &mut cnt, &mut maps).unwrap();
}

/// Timing on whatever adapter is found: 1000 sign flips, N = 58, q = 2, V = 228,000, for each
/// glm_stat kernel in turn (a fresh engine each; one warm-up batch excluded), then the kernels'
/// maxima and exceedance counts against the first one's.
/// `cargo test --release --test gpu_twins -- --ignored --nocapture time_`
/// VOXFLIP_TIME_PERMS overrides the count; VOXFLIP_TIME_KERNELS=tiles,wide (any of direct,
/// tiles/old, wide, wide128/new, a Wide one with "-unchecked" appended for
/// GpuEngine::set_unchecked) the kernels (default on hardware:
/// tiles,wide,wide128,wide128-unchecked; on software: direct).
#[test]
#[ignore]
fn time_1000_sign_flips_n58_q2_v228k() {
    let Some(g) = gpu() else { return };
    let list = match std::env::var("VOXFLIP_TIME_KERNELS") {
        Ok(list) => list,
        Err(_) if g.is_software() => "direct".into(),
        Err(_) => "tiles,wide,wide128,wide128-unchecked".into(),
    };
    let kernels: Vec<(GlmKernel, bool)> = list
        .split(',')
        .map(|k| {
            let (name, unchecked) = k.strip_suffix("-unchecked").map_or((k, false), |n| (n, true));
            (GlmKernel::parse(name).expect("direct, tiles, wide or wide128"), unchecked)
        })
        .collect();
    drop(g);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (n, v, q) = (58, 228_000, 2);
    let pb = problem(&mut rng, n, v, q, 1, StatKind::T);
    let count = std::env::var("VOXFLIP_TIME_PERMS").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let ps = perm_set(n, PermKind::SignFlip, count, 2);
    let observed = vec![0.5f32; v];
    let flops = pb.flops_per_perm() * ps.len() as f64;
    let mut results: Vec<(String, f64, Vec<f32>, Vec<u32>)> = Vec::new();
    let mut failed = Vec::new();
    for &(kernel, unchecked) in &kernels {
        let name = format!("{}{}", kernel.name(), if unchecked { "-unchecked" } else { "" });
        // A fresh engine per kernel: an error in one leaves the others' numbers intact.
        // VOXFLIP_GPU_TIMESTAMPS=1 also times the passes on the GPU itself.
        let timestamps = std::env::var("VOXFLIP_GPU_TIMESTAMPS").as_deref() == Ok("1");
        let mut g =
            crate::common::gpu_engine_with(module_path!(), &GpuOptions { timestamps, ..Default::default() }).unwrap();
        type Timed = (std::time::Duration, f64, Option<f64>, Vec<f32>, Vec<u32>);
        let run = |g: &mut GpuEngine| -> voxflip_engines::Result<Timed> {
            g.set_kernel(kernel)?;
            g.set_unchecked(unchecked)?;
            let t0 = std::time::Instant::now();
            g.prepare(&pb)?;
            let t_prep = t0.elapsed();
            let batch = g.preferred_batch();
            // Warm-up: pipeline creation, first-use allocations, clocks.
            g.run_batch(&ps, 0..batch.min(ps.len()), Some(&observed), None)?;
            let k0 = g.kernel_seconds();
            let t1 = std::time::Instant::now();
            let (mut max_stat, mut counts) = (Vec::with_capacity(ps.len()), vec![0u32; v]);
            let mut start = 0;
            while start < ps.len() {
                let end = (start + batch).min(ps.len());
                let r = g.run_batch(&ps, start..end, Some(&observed), None)?;
                max_stat.extend(r.max_stat);
                for (c, x) in counts.iter_mut().zip(&r.exceed) {
                    *c += x;
                }
                start = end;
            }
            let secs = t1.elapsed().as_secs_f64();
            let kernel = g.kernel_seconds().zip(k0).map(|(a, b)| a - b);
            Ok((t_prep, secs, kernel, max_stat, counts))
        };
        match run(&mut g) {
            Ok((t_prep, secs, kernel, max_stat, counts)) => {
                println!(
                    "{}: prepare {:.2?}, {count} perms in {secs:.4} s ({:.1} GFLOP/s), batch {}, chunk {} voxels x {} chunks",
                    g.describe(),
                    t_prep,
                    flops / secs / 1e9,
                    g.preferred_batch(),
                    g.chunk_voxels(),
                    g.chunks()
                );
                // VOXFLIP_GPU_TIMESTAMPS=1: the passes' own GPU time, without host waits.
                if let Some(k) = kernel {
                    println!("  {name}: glm_stat passes alone {k:.4} s on the GPU ({:.1} GFLOP/s)", flops / k / 1e9);
                }
                results.push((name, secs, max_stat, counts));
            }
            Err(e) => {
                println!("kernel {name}: FAILED: {e}");
                failed.push(name);
            }
        }
    }
    if let Some((k0, s0, m0, c0)) = results.first() {
        for (k, secs, m, c) in &results[1..] {
            let worst = m.iter().zip(m0).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0.0f32, f32::max);
            let counts_diff: u64 = c.iter().zip(c0).map(|(a, b)| a.abs_diff(*b) as u64).sum();
            println!(
                "{} vs {}: {:.2}x faster; max statistics differ by at most {worst:e} (relative), exceedance counts \
                 by {counts_diff} in total over {v} voxels",
                k,
                k0,
                s0 / secs
            );
            assert!(worst <= RTOL, "{k} and {k0} disagree on the maxima");
        }
    }
    assert!(failed.is_empty(), "kernels failed: {failed:?}");
}

#[test]
fn adapters_are_described() {
    let text = voxflip_engines::gpu::describe_adapters();
    println!("{text}");
    let list = voxflip_engines::gpu::list_adapters();
    assert_eq!(list.is_empty(), text.starts_with("no GPU adapters"));
    assert_eq!(voxflip_engines::gpu::hardware_adapter_available(), list.iter().any(|a| !a.software && a.compute));
}

/// Maps left on the device for the spatial stages (`run_batch_on_device`) equal the maps
/// read back by `run_batch`, and the reductions are the same.
#[test]
fn maps_kept_on_device_equal_maps_read_back() {
    let Some(mut g) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (n, v) = (23, 1000);
    let pb = problem(&mut rng, n, v, 2, 1, StatKind::T);
    let ps = perm_set(n, PermKind::SignFlip, 40, 4);
    g.prepare(&pb).unwrap();
    assert!(g.can_keep_maps(37));
    let observed = vec![0.3f32; v];
    let mut host = vec![0f32; 37 * v];
    let want = g.run_batch(&ps, 3..40, Some(&observed), Some(&mut host)).unwrap();
    let (got, buf) = g.run_batch_on_device(&ps, 3..40, Some(&observed)).unwrap();
    assert_eq!(got.max_stat, want.max_stat);
    assert_eq!(got.exceed, want.exceed);
    let sd = g.device().clone();
    let bytes = (4 * 37 * v) as u64;
    let staging = sd.wgpu().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = sd.wgpu().create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(&buf, 0, &staging, 0, bytes);
    sd.queue().submit(Some(enc.finish()));
    staging.slice(..).map_async(wgpu::MapMode::Read, |r| r.unwrap());
    sd.wgpu().poll(wgpu::PollType::wait_indefinitely()).unwrap();
    let kept: Vec<f32> = bytemuck::cast_slice(&staging.slice(..).get_mapped_range().unwrap()).to_vec();
    assert_eq!(kept, host, "kept maps differ from the maps read back");
    // Maps cannot be kept when the problem is split into chunks.
    g.tuning.chunk_voxels = Some(256);
    g.prepare(&pb).unwrap();
    assert!(!g.can_keep_maps(1));
    assert!(g.run_batch_on_device(&ps, 0..4, None).is_err());
    // ... and asking was not a device failure: the engine still runs.
    g.run_batch(&ps, 0..4, None, None).unwrap();
}
