//! Exact TFCE on the GPU (shaders/tfce_exact.wgsl through GpuSpatial) against its CPU port
//! (voxflip_shaders::cpu::tfce_exact) and against the CPU reference (voxflip_stats'
//! tfce_exact: f64 component tree with offsets, an independent formulation), then
//! GpuSpatial::reduce against SpatialJob::reduce, device-resident maps against host maps, and
//! the whole pipeline with `--tfce-exact` on the GPU against the CPU.
//!
//! Tolerances.
//! - GPU vs port: for integer H + 1 the kernel has no pow and no multiply feeding an add
//!   (every product is stored as bits before it is summed), so a device that rounds f32
//!   add / sub / mul correctly, as Vulkan requires, gives the port's bits; 4 ulp are allowed
//!   for denormal flushing. For other H the device's pow differs from the port's powf
//!   within `relative_bound`'s pow term (WGSL's exp2(y log2 x) accuracy).
//! - Both vs the reference: `relative_bound` (derived in voxflip_shaders::cpu::tfce_exact)
//!   times the value, plus 2^-40 of the map's largest TFCE for the reference's own f64
//!   cancellation residue, plus its rounding to f32 (2^-24 relative).
//! - Counts may differ only for (map, voxel) pairs whose TFCE lies within that band of the
//!   observed value; the tests bound the difference by those pairs.
//!
//! Skipped (saying so) without an adapter unless VOXFLIP_REQUIRE_GPU=1.
use crate::common::{gpu_usable, Tolerance, SIMULATED_INTERACTION};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use voxflip_engines::gpu::spatial::{BatchMaps, GpuSpatial};
use voxflip_shaders::cpu::tfce::{tfce_counts, tfce_max};
use voxflip_shaders::cpu::tfce_exact::{self as port, relative_bound};
use voxflip_shaders::spatial::{neighbour_table, TfceExactParams};
use voxflip_stats::spatial::{tfce_exact, Connectivity, MaskGraph, TfceParams, Workspace};
use voxflip_stats::spatial::{SpatialJob, SpatialNull, TfceOptions};

fn gpu() -> Option<GpuSpatial> {
    crate::common::gpu_spatial(module_path!())
}

fn random_mask(rng: &mut ChaCha8Rng, dims: [usize; 3], p: f64) -> Vec<bool> {
    (0..dims.iter().product::<usize>()).map(|_| rng.random_bool(p)).collect()
}

/// Smooth random maps (box blur of white noise on the full grid, restricted to the mask),
/// about N(0.5, 1.5^2), with NaN / +inf / -inf voxels when `specials`.
fn smooth_maps(rng: &mut ChaCha8Rng, g: &MaskGraph, nmaps: usize, specials: bool) -> Vec<f32> {
    let [nx, ny, nz] = g.dims;
    let n = nx * ny * nz;
    let mut out = Vec::with_capacity(nmaps * g.len());
    for _ in 0..nmaps {
        let mut a: Vec<f32> = (0..n).map(|_| rng.random::<f32>() - 0.5).collect();
        for _ in 0..2 {
            for (stride, len) in [(1, nx), (nx, ny), (nx * ny, nz)] {
                let b = a.clone();
                for i in 0..n {
                    let c = (i / stride) % len;
                    let mut s = b[i];
                    if c > 0 {
                        s += b[i - stride];
                    }
                    if c + 1 < len {
                        s += b[i + stride];
                    }
                    a[i] = s / 3.0;
                }
            }
        }
        let sd = (a.iter().map(|x| x * x).sum::<f32>() / n as f32).sqrt().max(1e-6);
        let mut m: Vec<f32> = g.voxels.iter().map(|&lin| a[lin as usize] / sd * 1.5 + 0.5).collect();
        if specials && m.len() > 10 {
            m[3] = f32::NAN;
            m[7] = f32::INFINITY;
            m[9] = f32::NEG_INFINITY;
        }
        out.extend(m);
    }
    out
}

fn positive_max(m: &[f32]) -> f32 {
    m.iter().copied().filter(|x| x.is_finite() && *x > 0.0).fold(0f32, f32::max)
}

/// The band within which the reference may differ from the exact integral, and the kernel
/// (or port) from it: see the module docs.
fn reference_band(p: &TfceExactParams, e: f32, v: usize, map: &[f32], value: f32, map_tfce_max: f32) -> f32 {
    (relative_bound(p, e, v, positive_max(map)) + 2f32.powi(-24)) * value + 2f32.powi(-40) * map_tfce_max
}

/// The device against the port: bit-exact but for denormals with integer H + 1, within the
/// pow term otherwise.
fn port_band(p: &TfceExactParams, e: f32, v: usize, map: &[f32], value: f32) -> f32 {
    let rel = if p.int_power > 0 { 4.0 * 2f32.powi(-24) } else { relative_bound(p, e, v, positive_max(map)) };
    rel * value + 1e-37
}

/// GPU = port and GPU, port = reference for `maps` over `g`; the counts against `observed`
/// too. Returns (pairs bit-identical to the port, pairs compared).
fn check_batch(
    gs: &mut GpuSpatial,
    g: &MaskGraph,
    maps: &[f32],
    tp: &TfceParams,
    observed: &[f32],
    what: &str,
) -> (usize, usize) {
    let v = g.len();
    let nmaps = maps.len() / v;
    let (nbrs, width) = neighbour_table(g);
    let p = TfceExactParams::new(v, width, nmaps, tp.h);
    let t = port::tfce_exact(&nbrs, width, maps, v, &p, &port::size_pow_table(v, tp.e, tp.h));
    let d = gs.tfce_exact_batch(g, maps, tp, Some(observed)).unwrap();
    assert_eq!(d.tfce.len(), maps.len());
    let mut ws = Workspace::new();
    let mut same = 0;
    for j in 0..nmaps {
        let m = &maps[j * v..(j + 1) * v];
        let r = tfce_exact(g, m, tp, &mut ws);
        let rmax = r.iter().copied().fold(0f32, f32::max);
        for i in 0..v {
            let (gv, tv, rv) = (d.tfce[j * v + i], t[j * v + i], r[i]);
            if !(m[i].is_finite() && m[i] > 0.0) {
                assert_eq!(gv, 0.0, "{what} map {j} voxel {i}: not enhanced, GPU {gv}");
                continue;
            }
            same += (gv.to_bits() == tv.to_bits()) as usize;
            assert!(
                (gv - tv).abs() <= port_band(&p, tp.e, v, m, tv),
                "{what} map {j} voxel {i}: GPU {gv} vs port {tv}"
            );
            let band = reference_band(&p, tp.e, v, m, rv, rmax);
            assert!((gv - rv).abs() <= band, "{what} map {j} voxel {i}: GPU {gv} vs reference {rv}");
            assert!((tv - rv).abs() <= band, "{what} map {j} voxel {i}: port {tv} vs reference {rv}");
        }
        let tm = tfce_max(&t[j * v..(j + 1) * v], v)[0];
        assert!(
            (d.max[j] - tm).abs() <= port_band(&p, tp.e, v, m, tm),
            "{what} map {j}: max {} vs port {tm}",
            d.max[j]
        );
        assert!(
            (d.max[j] - rmax).abs() <= reference_band(&p, tp.e, v, m, rmax, rmax),
            "{what} map {j}: max vs reference"
        );
    }
    // Counts: the device's must lie between the port's certain and possible exceedances.
    let mut tc = vec![0u32; v];
    tfce_counts(&t, observed, &mut tc);
    for i in 0..v {
        let (mut lo, mut hi) = (0u32, 0u32);
        for j in 0..nmaps {
            let x = t[j * v + i];
            let band = 2.0 * port_band(&p, tp.e, v, &maps[j * v..(j + 1) * v], observed[i].abs());
            lo += (x > observed[i] + band || (x == 0.0 && observed[i] <= 0.0)) as u32;
            hi += (x >= observed[i] - band) as u32;
        }
        assert!(lo <= d.counts[i] && d.counts[i] <= hi, "{what} voxel {i}: count {} outside [{lo}, {hi}]", d.counts[i]);
        assert!(lo <= tc[i] && tc[i] <= hi);
    }
    (same, (0..maps.len()).filter(|&k| maps[k].is_finite() && maps[k] > 0.0).count())
}

#[test]
fn exact_tfce_random_maps_all_connectivities_and_exponents() {
    let Some(mut gs) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let mut ws = Workspace::new();
    for (conn, h, e) in [
        (Connectivity::C6, 2.0, 0.5),
        (Connectivity::C26, 2.0, 1.0),
        (Connectivity::C18, 1.5, 0.7),
        (Connectivity::C6, 3.0, 0.0),
        (Connectivity::C26, 0.5, 2.0),
    ] {
        let tp = TfceParams { h, e, conn };
        let dims = [11, 10, 8];
        let g = MaskGraph::from_mask(dims, &random_mask(&mut rng, dims, 0.9), conn);
        let v = g.len();
        let obs_map = smooth_maps(&mut rng, &g, 1, false);
        let observed = tfce_exact(&g, &obs_map, &tp, &mut ws);
        let mut maps = smooth_maps(&mut rng, &g, 6, true);
        maps.extend_from_slice(&obs_map); // the observed map itself: its counts tie exactly
                                          // Sub-batches of 3 maps; the counts pass on a two-dimensional grid for one case.
        gs.tuning.max_maps_per_pass = Some(3);
        gs.tuning.max_groups_per_dim = (conn == Connectivity::C18).then_some(2);
        let (same, total) = check_batch(&mut gs, &g, &maps, &tp, &observed, &format!("{conn:?} H={h} E={e}"));
        println!("{conn:?} H={h} E={e}: {same} of {total} voxel-maps bit-identical to the port (V = {v})");
        // White noise: many small components merging at every height.
        let noise: Vec<f32> = (0..3 * v).map(|_| rng.random::<f32>() * 4.0 - 1.0).collect();
        check_batch(&mut gs, &g, &noise, &tp, &observed, &format!("{conn:?} H={h} E={e} noise"));
    }
    gs.tuning = Default::default();
}

#[test]
fn exact_tfce_adversarial_maps() {
    let Some(mut gs) = gpu() else { return };
    let dims = [7, 6, 5];
    let full = vec![true; dims.iter().product()];
    for conn in [Connectivity::C6, Connectivity::C18, Connectivity::C26] {
        let g = MaskGraph::from_mask(dims, &full, conn);
        let v = g.len();
        let on_face = |i: usize| {
            let c = g.coords(i);
            (0..3).any(|a| c[a] == 0 || c[a] + 1 == dims[a])
        };
        let cases: Vec<(&str, Vec<f32>)> = vec![
            ("plateau", vec![1.5; v]),
            ("two plateaus", (0..v).map(|i| if i % 7 < 3 { 2.0 } else { 1.0 }).collect()),
            ("single voxel", (0..v).map(|i| if i == 37 { 3.0 } else { -1.0 }).collect()),
            (
                "isolated voxels",
                (0..v).map(|i| if g.coords(i).iter().all(|c| c % 2 == 0) { 2.0 } else { -0.5 }).collect(),
            ),
            ("all negative", (0..v).map(|i| -(i as f32) - 1.0).collect()),
            ("specials", (0..v).map(|i| [f32::NAN, f32::INFINITY, 0.0, 1.0, f32::NEG_INFINITY][i % 5]).collect()),
            ("ramp", (0..v).map(|i| i as f32 * 0.01 + 0.001).collect()),
            ("the grid's faces", (0..v).map(|i| if on_face(i) { 2.5 } else { 0.5 }).collect()),
            ("tiny values", (0..v).map(|i| (i % 9) as f32 * 1e-20).collect()),
        ];
        let tp = TfceParams { h: 2.0, e: 0.5, conn };
        let batch: Vec<f32> = cases.iter().flat_map(|(_, m)| m.iter().copied()).collect();
        let observed = vec![0.5f32; v];
        for (name, m) in &cases {
            check_batch(&mut gs, &g, m, &tp, &observed, &format!("{name} {conn:?}"));
        }
        check_batch(&mut gs, &g, &batch, &tp, &observed, &format!("adversarial batch {conn:?}"));
        let d = gs.tfce_exact_batch(&g, &cases[4].1, &tp, None).unwrap();
        assert!(d.tfce.iter().all(|&x| x == 0.0) && d.max == [0.0], "all negative: zero TFCE, maximum 0");
        // A plateau is one component of V voxels from its height down: V^E t^(H+1) / (H+1).
        let d = gs.tfce_exact_batch(&g, &cases[0].1, &tp, None).unwrap();
        let closed = (v as f64).sqrt() * 1.5f64.powi(3) / 3.0;
        assert!(
            d.tfce.iter().all(|&x| ((x as f64 - closed) / closed).abs() < 4e-7),
            "plateau {} vs {closed}",
            d.tfce[0]
        );
    }
    // A mask touching the grid's faces only in places, and V = 1.
    let mut rng = ChaCha8Rng::seed_from_u64(32);
    let g = MaskGraph::from_mask(dims, &random_mask(&mut rng, dims, 0.6), Connectivity::C26);
    let maps = smooth_maps(&mut rng, &g, 4, true);
    check_batch(&mut gs, &g, &maps, &TfceParams::t2(), &vec![1.0; g.len()], "sparse mask");
    let g1 = MaskGraph::from_mask([1, 1, 1], &[true], Connectivity::C6);
    check_batch(&mut gs, &g1, &[3.0, -1.0, 0.25], &TfceParams::default(), &[1.0], "one voxel");
    // Maps long enough that one invocation's loops would pass llvmpipe's limit of 65,535
    // iterations (which ends them silently) without the kernel's budget per dispatch: a
    // ramp (one chain of 27,000 nodes) and a smooth map.
    let g = MaskGraph::from_mask([30, 30, 30], &vec![true; 27000], Connectivity::C6);
    let mut maps: Vec<f32> = (0..g.len()).map(|i| 1.0 + i as f32 * 1e-3).collect();
    maps.extend(smooth_maps(&mut rng, &g, 1, false));
    check_batch(&mut gs, &g, &maps, &TfceParams::default(), &vec![1.0; g.len()], "long maps");
}

/// The exact job through `configure` / `reduce` equals SpatialJob::reduce on the CPU (TFCE
/// maxima within the bound, counts but for near-ties, clusters exactly), and the observed
/// map's TFCE (`tfce_map`) is the kernel's.
#[test]
fn exact_reduce_matches_cpu() {
    let Some(mut gs) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(33);
    let mut ws = Workspace::new();
    let dims = [12, 11, 9];
    let mask = random_mask(&mut rng, dims, 0.9);
    let g6 = MaskGraph::from_mask(dims, &mask, Connectivity::C6);
    let g26 = MaskGraph::from_mask(dims, &mask, Connectivity::C26);
    let v = g6.len();
    let obs_map = smooth_maps(&mut rng, &g6, 1, false);
    let opts = TfceOptions { params: TfceParams::default(), exact: true, step: None };
    let observed = tfce_exact(&g6, &obs_map, &opts.params, &mut ws);
    for clusters in [false, true] {
        let job = SpatialJob {
            tfce: Some((&g6, opts, 0.0)),
            tfce_observed: Some(&observed),
            cluster_graph: clusters.then_some(&g26),
            extent_thr: clusters.then_some(1.5),
            mass_thr: clusters.then_some(2.0),
        };
        gs.configure(&job).unwrap();
        let on_gpu = gs.tfce_map(&obs_map).unwrap();
        let (nbrs, width) = neighbour_table(&g6);
        let p = TfceExactParams::new(v, width, 1, 2.0);
        let t = port::tfce_exact(&nbrs, width, &obs_map, v, &p, &port::size_pow_table(v, 0.5, 2.0));
        for i in 0..v {
            assert!((on_gpu[i] - t[i]).abs() <= port_band(&p, 0.5, v, &obs_map, t[i]), "observed TFCE voxel {i}");
        }
        gs.tuning.max_maps_per_pass = Some(3);
        let (mut cpu, mut dev) = (SpatialNull::default(), SpatialNull::default());
        let mut all = Vec::new();
        for _ in 0..2 {
            let maps = smooth_maps(&mut rng, &g6, 7, false);
            job.reduce(&maps, v, &mut cpu).unwrap();
            gs.reduce(BatchMaps::Host(&maps), v, &mut dev).unwrap();
            all.extend(maps);
        }
        assert_eq!(dev.tfce_max.len(), 14);
        assert_eq!(dev.extent_max, cpu.extent_max);
        assert_eq!(dev.mass_max.len(), cpu.mass_max.len());
        for (a, b) in dev.mass_max.iter().zip(&cpu.mass_max) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "mass max {a} vs {b}");
        }
        for (j, (a, b)) in dev.tfce_max.iter().zip(&cpu.tfce_max).enumerate() {
            let m = &all[j * v..(j + 1) * v];
            assert!((a - b).abs() <= reference_band(&p, 0.5, v, m, *b, *b), "tfce max {j}: {a} vs {b}");
        }
        // Counts: a pair can differ only within the band of the observed value.
        let mut near = 0usize;
        for j in 0..14 {
            let r = tfce_exact(&g6, &all[j * v..(j + 1) * v], &opts.params, &mut ws);
            let rmax = r.iter().copied().fold(0f32, f32::max);
            near += (0..v)
                .filter(|&i| {
                    (r[i] - observed[i]).abs()
                        <= 2.0 * reference_band(&p, 0.5, v, &all[j * v..(j + 1) * v], observed[i], rmax)
                })
                .count();
        }
        let differ: u32 = dev.tfce_counts.iter().zip(&cpu.tfce_counts).map(|(a, b)| a.abs_diff(*b)).sum();
        println!("exact reduce (clusters: {clusters}): counts differ by {differ}, {near} near-tie pairs of {}", 14 * v);
        assert!(differ as usize <= near, "counts differ by {differ} with only {near} near-ties");
    }
    gs.tuning = Default::default();
}

/// Maps the GPU engine left on its device reduce exactly as the same maps from the host.
#[test]
fn exact_device_resident_maps_reduce_like_host_maps() {
    use voxflip_stats::{PermKind, PermSet};
    let Some(mut engine) = crate::common::gpu_engine(module_path!()) else { return };
    let dims = [9, 8, 5];
    let v = dims[0] * dims[1] * dims[2];
    let n = 14;
    let mut rng = ChaCha8Rng::seed_from_u64(34);
    let mut y = vec![0f32; n * v];
    for i in 0..n {
        let shift: f32 = rng.random::<f32>() - 0.3;
        for x in 0..v {
            let (a, b) = ((x % 9) as f32, (x / 72) as f32);
            y[i * v + x] = shift + 0.6 * ((a * 0.7).sin() + (b * 0.9).cos()) + 0.8 * (rng.random::<f32>() - 0.5);
        }
    }
    let design = voxflip_stats::Design::one_sample(n);
    let model = voxflip_stats::ContrastModel::new(&design.m, &design.contrasts[0]).unwrap();
    let pb = model.problem(&y, v);
    engine.prepare(&pb).unwrap();
    let perms = PermSet::generate(n, PermKind::SignFlip, &vec![0; n], 30, 9).unwrap();
    let mut host = vec![0f32; 30 * v];
    engine.run_batch(&perms, 0..30, None, Some(&mut host)).unwrap();
    let (res, buf) = engine.run_batch_on_device(&perms, 0..30, None).unwrap();
    let g = MaskGraph::from_mask(dims, &vec![true; v], Connectivity::C6);
    let opts = TfceOptions { params: TfceParams::default(), exact: true, step: None };
    let observed = tfce_exact(&g, &host[..v], &opts.params, &mut Workspace::new());
    let job = SpatialJob {
        tfce: Some((&g, opts, 0.0)),
        tfce_observed: Some(&observed),
        cluster_graph: None,
        extent_thr: None,
        mass_thr: None,
    };
    let mut gs = GpuSpatial::on_device(engine.device().clone()).unwrap();
    gs.configure(&job).unwrap();
    // The observed TFCE as the pipeline takes it, from the same kernels: the identity's
    // TFCE then equals it and counts itself.
    let observed_gpu = gs.tfce_map(&host[..v]).unwrap();
    gs.set_tfce_observed(&observed_gpu).unwrap();
    let mut from_host = SpatialNull::default();
    gs.reduce(BatchMaps::Host(&host), v, &mut from_host).unwrap();
    gs.tuning.max_maps_per_pass = Some(7); // sub-batches inside the device buffer
    let mut from_device = SpatialNull::default();
    gs.reduce(BatchMaps::Device { buf: &buf, maxima: &res.max_stat }, v, &mut from_device).unwrap();
    assert_eq!(from_device, from_host);
    assert!(from_host.tfce_max.iter().any(|&t| t > 0.0));
    assert!(from_host.tfce_counts.iter().all(|&c| c >= 1), "the identity counts itself");
}

fn voxflip_ok(dir: &std::path::Path, args: &[&str]) -> String {
    let out = crate::common::voxflip(dir, args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "voxflip {args:?} failed: {err}");
    err
}

fn read_map(dir: &std::path::Path, name: &str) -> Vec<f32> {
    voxflip_io::read_image(&dir.join(name)).unwrap().data
}

/// The pipeline with `--tfce-exact`: TFCE on the GPU (`--spatial-backend gpu`) gives the
/// p-values of the CPU's exact TFCE of the same maps (`--spatial-backend cpu`), and agrees
/// with the CPU engine as tests/it/backends.rs requires of the stepwise TFCE.
///
/// Ties: a p-value counts the permutations whose TFCE (or maximum TFCE) is >= the observed
/// one. Both sides compute every TFCE, the observed one included, with their own rounding
/// (the GPU within `relative_bound` of the exact integral, the CPU within f32 rounding), so
/// a count can differ only by permutations whose value lies within ~1e-6 relative of the
/// observed one; the identity, computed by the same code as the observed map, always counts.
/// The test allows a p-value to differ by at most 1/P at no more than 0.2% of the voxels.
#[test]
fn exact_tfce_pipeline_on_the_gpu_equals_cpu() {
    if !gpu_usable(module_path!()) {
        return;
    }
    let tmp = voxflip_testkit::tempdir().unwrap();
    let d = tmp.path();
    voxflip_ok(d, &["simulate", "--out", "data", "--grid", "small"]);
    let nperm = 40;
    let runs = [("cpu", "cpu"), ("gpu", "cpu"), ("gpu", "gpu")];
    for (backend, spatial) in runs {
        let dir = format!("{backend}-{spatial}");
        std::fs::create_dir(d.join(&dir)).unwrap();
        let prefix = format!("{dir}/ia");
        let n = nperm.to_string();
        let args = [
            &SIMULATED_INTERACTION[..],
            &["-o", &prefix, "-n", &n, "--seed", "3", "--uncorrp", "-T", "--tfce-exact", "--save-null"],
            &["--backend", backend, "--spatial-backend", spatial],
        ]
        .concat();
        voxflip_ok(d, &args);
    }
    let sidecar = std::fs::read_to_string(d.join("gpu-gpu/ia_voxflip.json")).unwrap();
    assert!(sidecar.contains("\"spatial_backend\": \"gpu: "), "exact TFCE must have run on the GPU: {sidecar}");
    let (c, gc, gg) = (d.join("cpu-cpu"), d.join("gpu-cpu"), d.join("gpu-gpu"));
    let step = 1.0 / nperm as f32;
    for con in ["tstat1", "tstat2", "tstat3"] {
        let (tc, tg) =
            (read_map(&gc, &format!("ia_tfce_{con}.nii.gz")), read_map(&gg, &format!("ia_tfce_{con}.nii.gz")));
        // 2e-6 relative (both within ~1e-6 of the integral), plus the CPU reference's f64
        // cancellation residue relative to the map's largest TFCE (seen at 2e-5 relative on
        // values of 5e-10 in a map whose maximum is ~100).
        let tmax = tc.iter().copied().fold(0f32, f32::max);
        for (i, (a, b)) in tc.iter().zip(&tg).enumerate() {
            assert!(
                (a - b).abs() <= 2e-6 * a.abs() + 1e-9 * tmax,
                "{con} voxel {i}: observed TFCE {b} on the GPU vs {a} on the CPU"
            );
        }
        for what in ["tfce_p", "tfce_corrp"] {
            let file = format!("ia_{what}_{con}.nii.gz");
            let (pc, pg) = (read_map(&gc, &file), read_map(&gg, &file));
            let differ = pc.iter().zip(&pg).filter(|(a, b)| a != b).count();
            let worst = pc.iter().zip(&pg).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            println!("{file}: {differ} of {} voxels differ between GPU and CPU exact TFCE (at most {worst})", pc.len());
            assert!(worst <= step * 1.01, "{file}: a p-value moved by {worst} (more than one permutation)");
            assert!(differ * 500 <= pc.len(), "{file}: {differ} voxels differ");
            // Against the CPU engine: its maps differ from the GPU engine's by float rounding
            // (tests/it/backends.rs), so only the decisions are compared.
            let p_cpu = read_map(&c, &file);
            let flips = p_cpu.iter().zip(&pg).filter(|(a, b)| (**a >= 0.95) != (**b >= 0.95)).count();
            assert!(flips <= 2, "{file}: {flips} voxels change significance between the CPU and the GPU");
        }
        let file = format!("ia_tfce_corrp_{con}.txt");
        let null = |dir: &std::path::Path| -> Vec<f32> {
            std::fs::read_to_string(dir.join(&file)).unwrap().split_whitespace().map(|s| s.parse().unwrap()).collect()
        };
        let (nc, ng) = (null(&gc), null(&gg));
        assert_eq!(nc.len(), nperm);
        for (j, (a, b)) in nc.iter().zip(&ng).enumerate() {
            assert!(Tolerance::rel(2e-6).close(*a, *b), "{file} permutation {j}: {b} on the GPU vs {a} on the CPU");
        }
    }
}

/// Time per map of exact TFCE on the adapter against the CPU's exact TFCE, brain-sized.
#[test]
#[ignore]
fn timing_exact_brain_sized() {
    let Some(mut gs) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(35);
    let dims = [91, 109, 91];
    let mut mask = vec![false; dims.iter().product()];
    for z in 0..dims[2] {
        for y in 0..dims[1] {
            for x in 0..dims[0] {
                let (a, b, c) = ((x as f32 - 45.0) / 40.0, (y as f32 - 54.0) / 50.0, (z as f32 - 45.0) / 38.0);
                mask[x + dims[0] * (y + dims[1] * z)] = a * a + b * b + c * c <= 1.0;
            }
        }
    }
    let g = MaskGraph::from_mask(dims, &mask, Connectivity::C6);
    let v = g.len();
    let nmaps: usize = std::env::var("VOXFLIP_SPATIAL_MAPS").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    let opts = TfceOptions { params: TfceParams::default(), exact: true, step: None };
    let maps = smooth_maps(&mut rng, &g, nmaps + 1, false);
    let mut ws = Workspace::new();
    let observed = tfce_exact(&g, &maps[..v], &opts.params, &mut ws);
    let job = SpatialJob {
        tfce: Some((&g, opts, 0.0)),
        tfce_observed: Some(&observed),
        cluster_graph: None,
        extent_thr: None,
        mass_thr: None,
    };
    gs.configure(&job).unwrap();
    let mut null = SpatialNull::default();
    gs.reduce(BatchMaps::Host(&maps[..v]), v, &mut null).unwrap(); // warm-up
    let maps = &maps[v..];
    let mut best = (f64::INFINITY, f64::INFINITY);
    for _ in 0..3 {
        let t0 = std::time::Instant::now();
        gs.reduce(BatchMaps::Host(maps), v, &mut SpatialNull::default()).unwrap();
        best.0 = best.0.min(t0.elapsed().as_secs_f64());
        let t0 = std::time::Instant::now();
        job.reduce(maps, v, &mut SpatialNull::default()).unwrap();
        best.1 = best.1.min(t0.elapsed().as_secs_f64());
    }
    println!(
        "{}: V = {v}, {nmaps} maps, best of 3: exact TFCE on the adapter {:.1} ms/map; on the CPU (SpatialJob::reduce, rayon) {:.1} ms/map",
        gs.adapter_info().name,
        best.0 * 1e3 / nmaps as f64,
        best.1 * 1e3 / nmaps as f64
    );
}
