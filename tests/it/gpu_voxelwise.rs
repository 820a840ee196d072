//! The GPU engine's path for voxelwise regressors (--vxl; shaders/glm_stat_voxelwise.wgsl) on
//! a real adapter: the shader against its CPU port, and the engine against the CPU engine's
//! per-voxel path (crates/engines/src/cpu/voxelwise.rs) on problems built by
//! `voxelwise_problem`, with the bases in one chunk and cut into several (a test-only chunk
//! limit, so that a small problem needs several), the maps read back, kept on the device and
//! reduced there by the spatial shaders.
//!
//! Tolerances (as in gpu_twins): the shader sums each u_k in f32 over N terms with fused
//! multiply-adds in the port's order, and a driver may round WGSL's `/` and `sqrt` a few ULP
//! off; the CPU engine sums in f64 and rounds once. For N <= 100 and statistics of order 1
//! both stay well inside 1e-4 of max(|T|, 1) ([`TOL`]). Exceedance counts may differ only
//! where some T_jv lies within that band of observed_v: the tests count those pairs and bound
//! the difference by them.
//!
//! Without an adapter the tests skip (print why) unless VOXFLIP_REQUIRE_GPU=1.
use crate::common::{gpu_engine, gpu_engine_with, Tolerance};
use nalgebra::DMatrix;
use voxflip_engines::cpu::CpuEngine;
use voxflip_engines::gpu::spatial::GpuSpatial;
use voxflip_engines::gpu::GpuEngine;
use voxflip_engines::scheduler::{observed_map, permute_contrast};
use voxflip_engines::{Engine, GpuOptions, GpuTuning};
use voxflip_shaders::cpu::glm_stat_voxelwise as twin;
use voxflip_shaders::glm_stat::{FLAG_MAPS, FLAG_OBSERVED, FLAG_SRC, KIND_F, KIND_T};
use voxflip_shaders::glm_stat_voxelwise::chunk_bases;
use voxflip_shaders::keys::{key_of, value_of};
use voxflip_shaders::GlmParams;
use voxflip_stats::spatial::{tfce_step_from_observed, Connectivity, MaskGraph, SpatialJob, SpatialNull};
use voxflip_stats::spatial::{TfceOptions, TfceParams, Workspace};
use voxflip_stats::{
    voxelwise_problem, ConfoundMethod, Contrast, ContrastModel, ContrastProblem, PermKind, PermSet, StatKind,
    VoxelwiseEvs,
};

/// See the module docs: f32 sums of N <= 100 terms against f64, and a driver's few-ULP `/`
/// and `sqrt`.
const TOL: Tolerance = Tolerance::rel(1e-4);

/// A pseudo-random value in [-0.5, 0.5) from an index and a seed (splitmix64: no linear
/// relation between voxels, which would give two voxels the same design space).
fn noise(k: usize, seed: u32) -> f32 {
    let mut z = (k as u64).wrapping_add((seed as u64) << 32).wrapping_add(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 24) as f32 - 0.5
}

/// The problem of contrast `w` (t, or F over the rows of `w`) on a design of an intercept,
/// a group column and a voxelwise covariate (column 3, its placeholder the covariate's mean
/// over voxels), n rows and v voxels whose data depend on the covariate.
pub(crate) fn problem(n: usize, v: usize, w: &[&[f64]], seed: u32) -> ContrastProblem {
    let ev: Vec<f32> = (0..n * v).map(|k| noise(k, seed) * 4.0 + 1.0).collect();
    let y: Vec<f32> = (0..n * v).map(|k| noise(k, seed + 1) + 0.3 * ev[k] + 0.2 * ((k / v) % 2) as f32).collect();
    let col = |i: usize, k: usize, third: f64| match k {
        0 => 1.0,
        1 => (i % 2) as f64,
        _ => third,
    };
    let m = DMatrix::from_fn(n, 3, |i, k| col(i, k, 0.0));
    let base = DMatrix::from_fn(n, 3, |i, k| col(i, k, (0..v).map(|x| ev[i * v + x] as f64).sum::<f64>() / v as f64));
    let kind = if w.len() == 1 { StatKind::T } else { StatKind::F };
    let c = Contrast { name: "c".into(), kind, c: DMatrix::from_fn(3, w.len(), |k, r| w[r][k]) };
    let model = ContrastModel::new(&base, &c).unwrap();
    let evs = VoxelwiseEvs { columns: vec![2], values: vec![ev] };
    let vp = voxelwise_problem(&m, &model, &c, &evs, &y, v, ConfoundMethod::FreedmanLane);
    assert_eq!(vp.rank_deficient, 0);
    vp.problem
}

fn perm_set(n: usize, kind: PermKind, count: usize, seed: u64) -> PermSet {
    let labels: Vec<u32> = (0..n as u32).collect();
    PermSet::generate(n, kind, &labels, count, seed).unwrap()
}

/// Counts of `got` against `maps` (perm-major, v voxels) may differ from the exact ones only
/// by the pairs whose T lies within the band of observed.
fn check_counts(label: &str, got: &[u32], maps: &[f32], obs: &[f32], v: usize) {
    let nmaps = maps.len() / v;
    for x in 0..v {
        let (mut lo, mut hi) = (0u32, 0u32);
        for j in 0..nmaps {
            let t = maps[j * v + x];
            lo += (t > obs[x] + TOL.band(obs[x])) as u32;
            hi += (t >= obs[x] - TOL.band(obs[x])) as u32;
        }
        assert!((lo..=hi).contains(&got[x]), "{label}: voxel {x}: count {} not in {lo}..={hi}", got[x]);
    }
}

fn gpu() -> Option<GpuEngine> {
    gpu_engine(module_path!())
}

#[test]
fn glm_stat_voxelwise_matches_twin() {
    let Some(mut g) = gpu() else { return };
    for (n, v, w, kind, perms) in [
        (14usize, 300usize, &[&[0.0, 0.0, 1.0][..]][..], KIND_T, PermKind::SignFlip),
        (37, 261, &[&[0.0, 1.0, 0.0][..]][..], KIND_T, PermKind::Permute),
        (40, 100, &[&[0.0, 1.0, 0.0][..], &[0.0, 0.0, 1.0][..]][..], KIND_F, PermKind::Both),
    ] {
        let pb = problem(n, v, w, n as u32);
        let ps = perm_set(n, perms, 45, 3);
        let mut words = ps.all_flip_words().to_vec();
        let src_base = words.len() as u32;
        words.extend_from_slice(ps.all_src());
        let has_src = !ps.all_src().is_empty();
        let bases = chunk_bases(pb.voxel_qbasis.as_ref().unwrap(), n, pb.q, 0, v);
        let observed: Vec<f32> = (0..v).map(|x| noise(x, 99) * 2.0).collect();
        let vox: Vec<f32> = pb.ss.iter().chain(&observed).copied().collect();
        // Permutations 3.. of the set, from an offset (the engine's sub-batches).
        let (pa, np) = (3usize, ps.len() - 3);
        let params = GlmParams {
            n: n as u32,
            q: pb.q as u32,
            s: pb.s as u32,
            kind,
            vc: v as u32,
            n_perm: np as u32,
            perm_offset: pa as u32,
            wpp: ps.words_per_perm as u32,
            src_base,
            flags: FLAG_MAPS | FLAG_OBSERVED | if has_src { FLAG_SRC } else { 0 },
            maps_base: pa as u32,
            dof: pb.dof,
            inv_s: GlmParams::inv_s_of(pb.s as u32),
            ..Default::default()
        };
        // Nonzero initial maxima and counts: the stage must combine, not overwrite.
        let init_max: Vec<u32> = (0..ps.len()).map(|j| if j % 5 == 0 { key_of(1.5) } else { 0 }).collect();
        let init_counts: Vec<u32> = (0..v).map(|x| (x % 3) as u32).collect();
        let (mut mg, mut cg, mut pg) = (init_max.clone(), init_counts.clone(), vec![0f32; np * v]);
        let (mut mc, mut cc, mut pc) = (init_max.clone(), init_counts.clone(), vec![0f32; np * v]);
        g.run_glm_stat_voxelwise(&params, &words, &bases, &pb.e, &vox, &mut mg, &mut cg, &mut pg).unwrap();
        twin::glm_stat_voxelwise(&params, &words, &bases, &pb.e, &vox, &mut mc, &mut cc, &mut pc);
        let label = format!("n {n}, {perms:?}");
        for (i, (&a, &b)) in pg.iter().zip(&pc).enumerate() {
            assert!((a - b).abs() <= TOL.band(b), "{label}: map value {i}: gpu {a} vs twin {b}");
        }
        for j in 0..ps.len() {
            let (a, b) = (value_of(mg[j]), value_of(mc[j]));
            assert!(a == b || (a - b).abs() <= TOL.band(b), "{label}: max of perm {j}: gpu {a} vs twin {b}");
        }
        assert_eq!(mg[..pa], init_max[..pa], "{label}: maxima outside the dispatch");
        let added: Vec<u32> = cg.iter().zip(&init_counts).map(|(a, b)| a - b).collect();
        check_counts(&label, &added, &pc, &observed, v);
        let twin_added: Vec<u32> = cc.iter().zip(&init_counts).map(|(a, b)| a - b).collect();
        assert!(twin_added.iter().any(|&c| c > 0), "{label}: some exceedances");
    }
}

/// The CPU engine's observed map, maxima, counts and maps of `ps` on `pb`.
fn cpu_run(pb: &ContrastProblem, ps: &PermSet) -> (Vec<f32>, Vec<f32>, Vec<u32>, Vec<f32>) {
    let mut cpu = Engine::Cpu(CpuEngine::new());
    cpu.prepare(pb).unwrap();
    let obs = observed_map(&mut cpu, pb, ps.kind).unwrap();
    let mut maps = vec![0f32; ps.len() * pb.v];
    let r = cpu.run_batch(ps, 0..ps.len(), Some(&obs), Some(&mut maps)).unwrap();
    (obs, r.max_stat, r.exceed, maps)
}

#[test]
fn gpu_engine_equals_cpu_engine_in_one_chunk_and_in_several() {
    if gpu().is_none() {
        return;
    }
    let (n, v) = (22usize, 700usize);
    let cases: [(&[&[f64]], PermKind); 3] = [
        (&[&[0.0, 0.0, 1.0]], PermKind::SignFlip),
        (&[&[0.0, -1.0, 0.0]], PermKind::Permute),
        (&[&[0.0, 1.0, 0.0], &[0.0, 0.0, 1.0]], PermKind::Permute),
    ];
    // One chunk (no limits), then chunks of 150 voxels (5), with dispatches cut small and
    // the maps read back a few permutations at a time.
    let several = GpuTuning {
        chunk_voxels: Some(150),
        max_macs_per_dispatch: Some(1 << 16),
        max_maps_bytes: Some(4096),
        batch: None,
    };
    for tuning in [GpuTuning::default(), several] {
        let opts = GpuOptions { tuning, ..Default::default() };
        let mut g = gpu_engine_with(module_path!(), &opts).unwrap();
        for (ci, &(w, kind)) in cases.iter().enumerate() {
            let pb = problem(n, v, w, 10 + ci as u32);
            let ps = perm_set(n, kind, 120, 4);
            let (obs, max_cpu, counts_cpu, maps_cpu) = cpu_run(&pb, &ps);
            let label = format!("case {ci}, chunk limit {:?}", tuning.chunk_voxels);
            g.prepare(&pb).unwrap();
            assert!(g.describe().contains("glm_stat_voxelwise"), "{}", g.describe());
            // The small dispatch bound cuts the chunks further (to one row of tiles each).
            let several = tuning.chunk_voxels.is_some();
            assert!(if several { g.chunks() >= v.div_ceil(150) } else { g.chunks() == 1 }, "{label}: {}", g.chunks());
            assert_eq!(g.chunks(), v.div_ceil(g.chunk_voxels()), "{label}");
            let mut ge = Engine::Gpu(Box::new(g));
            let obs_gpu = observed_map(&mut ge, &pb, ps.kind).unwrap();
            for (x, (&a, &b)) in obs_gpu.iter().zip(&obs).enumerate() {
                assert!((a - b).abs() <= TOL.band(b), "{label}: observed voxel {x}: gpu {a} vs cpu {b}");
            }
            // In two batches, the second from an offset into the set.
            let mut maps = vec![0f32; ps.len() * v];
            let (first, rest) = maps.split_at_mut(50 * v);
            let r1 = ge.run_batch(&ps, 0..50, Some(&obs), Some(first)).unwrap();
            let r2 = ge.run_batch(&ps, 50..ps.len(), Some(&obs), Some(rest)).unwrap();
            let max: Vec<f32> = r1.max_stat.iter().chain(&r2.max_stat).copied().collect();
            let counts: Vec<u32> = r1.exceed.iter().zip(&r2.exceed).map(|(a, b)| a + b).collect();
            for (i, (&a, &b)) in maps.iter().zip(&maps_cpu).enumerate() {
                assert!((a - b).abs() <= TOL.band(b), "{label}: map value {i}: gpu {a} vs cpu {b}");
            }
            for (j, (&a, &b)) in max.iter().zip(&max_cpu).enumerate() {
                assert!((a - b).abs() <= TOL.band(b), "{label}: max of perm {j}: gpu {a} vs cpu {b}");
            }
            check_counts(&label, &counts, &maps_cpu, &obs, v);
            check_counts(&label, &counts_cpu, &maps_cpu, &obs, v);
            assert!(counts.iter().any(|&c| c > 1) && counts.iter().any(|&c| (c as usize) < ps.len()));
            let Engine::Gpu(back) = ge else { unreachable!() };
            g = *back;
            // Maps kept on the device (one chunk only): the same kernel, the same bits.
            if g.chunks() == 1 {
                assert!(g.can_keep_maps(ps.len()));
                let (r, buf) = g.run_batch_on_device(&ps, 0..ps.len(), Some(&obs)).unwrap();
                let bytes = g.device().read_back(&buf, 0, (4 * ps.len() * v) as u64, "kept maps").unwrap();
                let kept: &[f32] = bytemuck::cast_slice(&bytes);
                assert!(kept.iter().zip(&maps).all(|(a, b)| a.to_bits() == b.to_bits()), "{label}: kept maps");
                assert_eq!(r.max_stat, max, "{label}: kept maps' maxima");
                assert_eq!(r.exceed, counts, "{label}: kept maps' counts");
            } else {
                assert!(!g.can_keep_maps(ps.len()), "{label}: several chunks are read back");
            }
        }
    }
}

#[test]
fn voxelwise_maps_reduced_on_the_device_equal_the_host_reduction() {
    // The scheduler's device path: maps stay on the GPU and the spatial shaders reduce them
    // there. Against the same engine's maps read back and reduced by SpatialJob on the CPU:
    // cluster extents come from comparisons of the same values (exact); TFCE sums positive
    // f32 terms over L <= 100 levels in another order (within (L + 4) 2^-24 relative, see
    // gpu_spatial_twins: 1e-5).
    let Some(mut g) = gpu() else { return };
    let dims = [10usize, 10, 7];
    let v: usize = dims.iter().product();
    let pb = problem(18, v, &[&[0.0, 0.0, 1.0]], 21);
    let ps = perm_set(18, PermKind::SignFlip, 60, 8);
    g.prepare(&pb).unwrap();
    let mut reducer = GpuSpatial::on_device(g.device().clone()).unwrap();
    let mut engine = Engine::Gpu(Box::new(g));
    let obs = observed_map(&mut engine, &pb, ps.kind).unwrap();
    let g6 = MaskGraph::from_mask(dims, &vec![true; v], Connectivity::C6);
    let opts = TfceOptions { params: TfceParams::default(), exact: false, step: None };
    let mut job = SpatialJob {
        tfce: Some((&g6, opts, tfce_step_from_observed(&obs))),
        tfce_observed: None,
        cluster_graph: Some(&g6),
        extent_thr: Some(0.5),
        mass_thr: None,
    };
    let mut tfce_obs = vec![0f32; v];
    job.tfce_map(&obs, &mut Workspace::new(), &mut tfce_obs).unwrap();
    job.tfce_observed = Some(&tfce_obs);
    reducer.configure(&job).unwrap();
    reducer.set_tfce_observed(&tfce_obs).unwrap();
    let got = permute_contrast(&mut engine, &pb, &ps, 0..ps.len(), &obs, Some(&job), Some(&mut reducer), &()).unwrap();
    let mut maps = vec![0f32; ps.len() * v];
    engine.run_batch(&ps, 0..ps.len(), None, Some(&mut maps)).unwrap();
    let mut want = SpatialNull::default();
    job.reduce(&maps, v, &mut want).unwrap();
    assert!(engine.describe().starts_with("gpu"), "the run stayed on the GPU");
    assert_eq!(got.spatial.extent_max, want.extent_max);
    assert_eq!(got.spatial.tfce_max.len(), ps.len());
    for (j, (&a, &b)) in got.spatial.tfce_max.iter().zip(&want.tfce_max).enumerate() {
        assert!((a - b).abs() <= 1e-5 * b.abs(), "TFCE max of perm {j}: device {a} vs host {b}");
    }
    assert!(want.extent_max.iter().any(|&e| e > 1.0), "clusters formed: {:?}", want.extent_max);
}

/// Timing (not a pass/fail check): ms per 100 permutations of a --vxl problem of 20,000
/// voxels, N = 58, q = 3 (intercept, group, voxelwise covariate), on the adapter found and on
/// the CPU engine, for sign flips and relabelings, after one warm-up batch each.
/// `cargo test --release --test it -- --ignored --nocapture time_voxelwise`
/// VOXFLIP_TIME_PERMS overrides the count (default 500).
#[test]
#[ignore]
fn time_voxelwise_n58_v20k() {
    let Some(mut g) = gpu() else { return };
    let (n, v) = (58usize, 20_000usize);
    let pb = problem(n, v, &[&[0.0, 0.0, 1.0]], 3);
    let count: usize = std::env::var("VOXFLIP_TIME_PERMS").ok().and_then(|s| s.parse().ok()).unwrap_or(500);
    g.prepare(&pb).unwrap();
    println!("{}", g.describe());
    let mut engines = [Engine::Gpu(Box::new(g)), Engine::Cpu(CpuEngine::new())];
    for kind in [PermKind::SignFlip, PermKind::Permute] {
        let ps = perm_set(n, kind, count, 6);
        let mut nulls = Vec::new();
        for e in engines.iter_mut() {
            e.prepare(&pb).unwrap();
            let obs = observed_map(e, &pb, ps.kind).unwrap();
            let batch = e.preferred_batch().min(ps.len());
            e.run_batch(&ps, 0..batch.min(50), Some(&obs), None).unwrap();
            let t0 = std::time::Instant::now();
            let got = permute_contrast(e, &pb, &ps, 0..ps.len(), &obs, None, None, &()).unwrap();
            let secs = t0.elapsed().as_secs_f64();
            let name = if matches!(e, Engine::Gpu(_)) { "gpu" } else { "cpu" };
            println!("{kind:?}, {name}: {count} perms in {secs:.3} s, {:.1} ms per 100", secs * 1e5 / count as f64);
            nulls.push(got.max_stat);
        }
        let agree = nulls[0].iter().zip(&nulls[1]).all(|(a, b)| TOL.close(*a, *b));
        println!("{kind:?}: maxima agree within {:e}: {agree}", TOL.rel);
    }
}
