//! The spatial kernels (shaders/label_components.wgsl, shaders/tfce.wgsl) against their CPU
//! twins (engine::gpu::cpu::{label_components, tfce}), the twins against the CPU reference
//! (voxflip_stats::spatial) and a flood-fill oracle, and GpuSpatial::reduce against
//! SpatialJob::reduce.
//!
//! Tolerances. Lavapipe gives the twins' bits exactly; real GPUs may round differently
//! (fused multiply-add contraction, pow, division to 2.5 ulp), so every comparison of device
//! arithmetic against the twin has a tolerance, and only integer results and comparisons of
//! inputs are checked exactly. The device computes no pow and no division here: the size and
//! level tables (s^E, h^H) are built on the host and uploaded.
//! - Labels, extents and the fixed-point mass sums are integers from comparisons of inputs
//!   (x > thr, x >= thr) and exact power-of-two scaling: exactly equal on any device.
//! - Masses in f32: GPU and twin convert the same integers with the same operations; a
//!   driver may fuse `a * b + c`, so 2 ulp. Twin vs the f64 reference: the fixed point's
//!   bound n * maxabs * 2^-30 plus 2^-22 relative (see MassScale).
//! - TFCE: every term is positive, each of the L level additions rounds by at most 2^-24 of
//!   the partial sum, the two table factors and their product by 2^-24 each: GPU vs twin
//!   (which may differ by a fused multiply-add per level) and twin vs the f64 reference both
//!   within (L + 4) * 2^-24 relative, plus 1e-7 of the map maximum for the reference's
//!   cancellation residue. A TFCE of exactly 0 (the voxel never rose above a level) is exact
//!   on any device. Counts may differ only for (map, voxel) pairs within that band of the
//!   observed value, equality included; the tests count them, bound the difference by them,
//!   and check that the band stays narrow.
//!
//! Without an adapter the tests skip (print why) unless VOXFLIP_REQUIRE_GPU=1. Software
//! adapters (lavapipe) are allowed here.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;
use voxflip_engines::gpu::spatial::{BatchMaps, GpuSpatial};
use voxflip_shaders::cpu::label_components::{self as twin, MODE_INCLUSIVE, MODE_TFCE, NONE};
use voxflip_shaders::cpu::tfce as ttfce;
use voxflip_shaders::spatial::neighbour_table;
use voxflip_stats::spatial::{cluster_sizes_masses, tfce_stepwise, Connectivity, MaskGraph, TfceParams, Workspace};
use voxflip_stats::spatial::{SpatialJob, SpatialNull, TfceOptions};

const CONNS: [Connectivity; 3] = [Connectivity::C6, Connectivity::C18, Connectivity::C26];

fn gpu() -> Option<GpuSpatial> {
    crate::common::gpu_spatial(module_path!())
}

/// Flood fill from each unvisited active voxel in index order: every voxel gets the smallest
/// voxel index of its component (the first one the scan meets), or NONE.
fn flood_fill(g: &MaskGraph, maps: &[f32], thr: f32, mode: u32) -> Vec<u32> {
    let v = g.len();
    let mut out = vec![NONE; maps.len()];
    for base in (0..maps.len()).step_by(v) {
        let on = |u: usize| twin::active(maps[base + u], thr, mode);
        for s in 0..v {
            if !on(s) || out[base + s] != NONE {
                continue;
            }
            out[base + s] = s as u32;
            let mut q = VecDeque::from([s]);
            while let Some(x) = q.pop_front() {
                for &u in g.neighbours(x) {
                    let u = u as usize;
                    if on(u) && out[base + u] == NONE {
                        out[base + u] = s as u32;
                        q.push_back(u);
                    }
                }
            }
        }
    }
    out
}

fn random_mask(rng: &mut ChaCha8Rng, dims: [usize; 3], p: f64) -> Vec<bool> {
    (0..dims.iter().product::<usize>()).map(|_| rng.random_bool(p)).collect()
}

/// Smooth random maps on the full grid (box blur), restricted to the mask, scaled to about
/// N(0.5, 1.5^2) with a few NaN / inf / negative voxels when `specials`.
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

fn check_labels(gs: &mut GpuSpatial, g: &MaskGraph, maps: &[f32], thr: f32, mode: u32, what: &str) {
    let (nbrs, width) = neighbour_table(g);
    let t = twin::label_components(&nbrs, width, maps, g.len(), thr, mode);
    let o = flood_fill(g, maps, thr, mode);
    assert_eq!(t, o, "{what}: twin labels differ from the flood fill");
    let d = gs.label_components(g, maps, thr, mode).unwrap();
    assert_eq!(d, t, "{what}: GPU labels differ from the twin");
}

#[test]
fn labels_random_masks_and_maps() {
    let Some(mut gs) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for (ci, &conn) in CONNS.iter().enumerate() {
        // V not a multiple of 64; B = 1, 5, 67 (the last over several sub-batches).
        let dims = [9 + ci, 8, 7];
        let mask = random_mask(&mut rng, dims, 0.85);
        let g = MaskGraph::from_mask(dims, &mask, conn);
        for (b, sub) in [(1usize, None), (5, None), (67, Some(16))] {
            gs.tuning.max_maps_per_pass = sub;
            let maps = smooth_maps(&mut rng, &g, b, true);
            for thr in [0.0f32, 1.0, 2.5] {
                check_labels(&mut gs, &g, &maps, thr, MODE_INCLUSIVE, &format!("{conn:?} B={b} thr={thr}"));
            }
            check_labels(&mut gs, &g, &maps, 1.0, MODE_TFCE, &format!("{conn:?} B={b} tfce mode"));
            // White noise: many small clusters.
            let noise: Vec<f32> = (0..b * g.len()).map(|_| rng.random::<f32>()).collect();
            check_labels(&mut gs, &g, &noise, 0.5, MODE_INCLUSIVE, &format!("{conn:?} B={b} noise"));
        }
    }
}

/// A grid and a set of lit voxels (1.0; others -1.0 or NaN), full mask.
fn lit(dims: [usize; 3], on: impl Fn(usize, usize, usize) -> bool) -> Vec<f32> {
    let mut m = Vec::new();
    for z in 0..dims[2] {
        for y in 0..dims[1] {
            for x in 0..dims[0] {
                m.push(if on(x, y, z) {
                    1.0
                } else if (x + y + z) % 5 == 0 {
                    f32::NAN
                } else {
                    -1.0
                });
            }
        }
    }
    m
}

/// A one-voxel-wide square spiral in the plane z = 1 (edges of the spiral touch only along
/// their length: one component winding inwards, with the smallest index at its outer end).
fn spiral(n: usize) -> Vec<(usize, usize)> {
    let mut on = vec![vec![false; n]; n];
    let (mut x, mut y) = (0i64, 0i64);
    let dirs = [(1i64, 0i64), (0, 1), (-1, 0), (0, -1)];
    let mut d = 0;
    on[0][0] = true;
    let free = |on: &Vec<Vec<bool>>, x: i64, y: i64| {
        x >= 0 && y >= 0 && (x as usize) < n && (y as usize) < n && !on[y as usize][x as usize]
    };
    let mut stuck = 0;
    while stuck < 2 {
        let (dx, dy) = dirs[d];
        let (nx, ny) = (x + dx, y + dy);
        let (ax, ay) = (nx + dx, ny + dy);
        // Keep one empty line between turns: only step if the cell after next is free too
        // (or off the grid).
        let ahead_ok = !(ax >= 0 && ay >= 0 && (ax as usize) < n && (ay as usize) < n) || free(&on, ax, ay);
        if free(&on, nx, ny) && ahead_ok {
            on[ny as usize][nx as usize] = true;
            x = nx;
            y = ny;
            stuck = 0;
        } else {
            d = (d + 1) % 4;
            stuck += 1;
        }
    }
    let mut out = Vec::new();
    for (y, row) in on.iter().enumerate() {
        for (x, &b) in row.iter().enumerate() {
            if b {
                out.push((x, y));
            }
        }
    }
    out
}

#[test]
fn labels_adversarial() {
    let Some(mut gs) = gpu() else { return };
    let dims = [11, 11, 3];
    let full = vec![true; dims.iter().product()];
    let sp = spiral(11);
    let cases: Vec<(&str, Vec<f32>)> = vec![
        ("spiral", lit(dims, |x, y, z| z == 1 && sp.contains(&(x, y)))),
        ("single voxels", lit(dims, |x, y, z| x % 2 == 0 && y % 2 == 0 && z % 2 == 0)),
        // Touch by faces only along x, by edges in (x,y), by corners in (x,y,z).
        ("checkerboard (edges)", lit(dims, |x, y, _| (x + y) % 2 == 0)),
        ("3-D checkerboard (corners)", lit(dims, |x, y, z| (x + y + z) % 2 == 0)),
        (
            "diagonal corner chain",
            lit(dims, |x, y, z| x == y && z == x % 3), // (0,0,0)-(1,1,1)-(2,2,2) by corners, then (3,3,0) anew
        ),
        ("whole grid", lit(dims, |_, _, _| true)),
        ("nothing", lit(dims, |_, _, _| false)),
        // A comb: teeth joined only at the far end, smallest indices in different teeth.
        ("comb", lit(dims, |x, y, _| x % 2 == 0 || y == 10)),
    ];
    for &conn in &CONNS {
        let g = MaskGraph::from_mask(dims, &full, conn);
        for (name, m) in &cases {
            check_labels(&mut gs, &g, m, 0.5, MODE_INCLUSIVE, &format!("{name} {conn:?}"));
            check_labels(&mut gs, &g, m, 1.0, MODE_INCLUSIVE, &format!("{name} {conn:?} at 1.0 (inclusive)"));
        }
        // Several adversarial maps in one batch.
        let batch: Vec<f32> = cases.iter().flat_map(|(_, m)| m.iter().copied()).collect();
        check_labels(&mut gs, &g, &batch, 0.5, MODE_INCLUSIVE, &format!("adversarial batch {conn:?}"));
        // The spiral over a sparse mask made of the spiral itself (V tiny, odd).
        let mask: Vec<bool> = cases[0].1.iter().map(|&x| x == 1.0).collect();
        let gm = MaskGraph::from_mask(dims, &mask, conn);
        let ones = vec![1.0f32; gm.len()];
        check_labels(&mut gs, &gm, &ones, 0.5, MODE_INCLUSIVE, &format!("spiral mask {conn:?}"));
        let t = twin::label_components(&neighbour_table(&gm).0, neighbour_table(&gm).1, &ones, gm.len(), 0.5, 0);
        assert!(t.iter().all(|&r| r == 0), "the spiral is one component ({conn:?})");
    }
    // A single voxel: V = 1, no neighbours.
    let g1 = MaskGraph::from_mask([1, 1, 1], &[true], Connectivity::C26);
    check_labels(&mut gs, &g1, &[3.0, -1.0, 2.0], 0.0, MODE_INCLUSIVE, "one voxel");
}

#[test]
fn extents_and_masses() {
    let Some(mut gs) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut ws = Workspace::new();
    for &conn in &CONNS {
        let dims = [12, 10, 9];
        let mask = random_mask(&mut rng, dims, 0.9);
        let g = MaskGraph::from_mask(dims, &mask, conn);
        let (nbrs, width) = neighbour_table(&g);
        let v = g.len();
        let b = 13;
        let mut maps = smooth_maps(&mut rng, &g, b, false);
        maps[v + 5] = f32::NAN; // NaN never enters
        for thr in [-0.5f32, 1.0, 2.3] {
            let d = gs.cluster_stats(&g, &maps, thr).unwrap();
            let scale: Vec<_> = maps.chunks(v).map(|m| twin::MassScale::for_map(m, thr)).collect();
            assert_eq!(d.scales, scale);
            let parent = twin::label_components(&nbrs, width, &maps, v, thr, MODE_INCLUSIVE);
            assert_eq!(d.parent, parent);
            let acc = twin::measure(&parent, &maps, v, Some(&scale));
            assert_eq!(d.acc, acc, "{conn:?} thr={thr}: sizes / fixed-point masses");
            let tmax = twin::cluster_max(&parent, &acc, v, Some(&scale));
            for j in 0..b {
                let (ge, gm) = d.max[j];
                let (te, tm) = tmax[j];
                assert_eq!(ge, te, "{conn:?} thr={thr} map {j}: extent");
                assert!(gm == tm || (gm - tm).abs() <= 2.0 * f32::EPSILON * tm.abs(), "mass {gm} vs twin {tm}");
                let m = &maps[j * v..(j + 1) * v];
                let (re, rm) = cluster_sizes_masses(&g, m, thr, &mut ws);
                assert_eq!(te, re, "{conn:?} thr={thr} map {j}: twin extent vs reference");
                if re == 0 {
                    assert_eq!(tm, f32::NEG_INFINITY);
                    continue;
                }
                let maxabs = m.iter().filter(|x| x.is_finite() && **x >= thr).fold(0f32, |a, x| a.max(x.abs()));
                let bound = v as f32 * maxabs * 2f32.powi(-30) + 2f32.powi(-22) * rm.abs() + 1e-30;
                assert!((tm - rm).abs() <= bound, "{conn:?} thr={thr} map {j}: mass {tm} vs reference {rm}");
            }
        }
    }
}

fn tfce_tol(x: f32, levels: usize, map_max: f32) -> f32 {
    (levels as f32 + 4.0) * 2f32.powi(-24) * x.abs() + 1e-7 * map_max
}

#[test]
fn tfce_maps_maxima_counts() {
    let Some(mut gs) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut ws = Workspace::new();
    for (conn, params) in [
        (Connectivity::C6, TfceParams::default()),
        (Connectivity::C26, TfceParams::t2()),
        (Connectivity::C18, TfceParams { h: 1.5, e: 0.7, conn: Connectivity::C18 }),
    ] {
        let dims = [11, 10, 8];
        let mask = random_mask(&mut rng, dims, 0.92);
        let g = MaskGraph::from_mask(dims, &mask, conn);
        let (nbrs, width) = neighbour_table(&g);
        let v = g.len();
        let b = 6;
        let obs_map = smooth_maps(&mut rng, &g, 1, false);
        let dh = voxflip_stats::spatial::tfce_step_from_observed(&obs_map);
        let observed = tfce_stepwise(&g, &obs_map, &params, dh, &mut ws).unwrap();
        let mut maps = smooth_maps(&mut rng, &g, b, true);
        maps.extend_from_slice(&obs_map); // the observed map itself: counts tie exactly
        let b = b + 1;
        gs.tuning.max_maps_per_pass = Some(4);
        // Two-dimensional grids (x capped at 5 workgroups) for one of the configurations.
        gs.tuning.max_groups_per_dim = (conn == Connectivity::C18).then_some(5);
        let d = gs.tfce_batch(&g, &maps, &params, dh, Some(&observed)).unwrap();
        gs.tuning.max_groups_per_dim = None;
        // The twin per sub-batch of 4, as the device ran it (levels depend on the sub-batch max).
        let mut t = Vec::new();
        let mut levels_of = Vec::new();
        for sub in maps.chunks(4 * v) {
            let (hs, hp) = ttfce::level_table(sub, dh, params.h).unwrap();
            let sp = ttfce::size_pow_table(v, params.e);
            t.extend(ttfce::tfce(&nbrs, width, sub, v, &hs, &hp, &sp));
            levels_of.extend(std::iter::repeat_n(hs.len(), sub.len() / v));
        }
        let mut worst = (0f32, 0f32);
        for j in 0..b {
            let r = tfce_stepwise(&g, &maps[j * v..(j + 1) * v], &params, dh, &mut ws).unwrap();
            let rmax = r.iter().copied().fold(0f32, f32::max);
            for i in 0..v {
                let (gv, tv, rv) = (d.tfce[j * v + i], t[j * v + i], r[i]);
                let l = levels_of[j];
                assert!((gv - tv).abs() <= tfce_tol(tv, l, 0.0), "{conn:?} map {j} voxel {i}: GPU {gv} vs twin {tv}");
                assert!((tv - rv).abs() <= tfce_tol(rv, l, rmax), "{conn:?} map {j} voxel {i}: twin {tv} vs ref {rv}");
                worst.0 = worst.0.max((gv - tv).abs() / tv.abs().max(1e-30));
                worst.1 = worst.1.max((tv - rv).abs() / rv.abs().max(1e-30));
            }
            let tm = ttfce::tfce_max(&t[j * v..(j + 1) * v], v)[0];
            assert!((d.max[j] - tm).abs() <= tfce_tol(tm, levels_of[j], 0.0), "max {} vs twin {tm}", d.max[j]);
            assert!((tm - rmax).abs() <= tfce_tol(rmax, levels_of[j], rmax), "twin max {tm} vs ref {rmax}");
        }
        println!("{conn:?}: worst relative TFCE difference GPU/twin {:e}, twin/reference {:e}", worst.0, worst.1);
        // Counts: GPU vs twin, within the band of near-ties.
        let mut tc = vec![0u32; v];
        ttfce::tfce_counts(&t, &observed, &mut tc);
        let mut ambiguous = 0;
        for i in 0..v {
            let (mut lo, mut hi) = (0u32, 0u32);
            for j in 0..b {
                let x = t[j * v + i];
                let band = tfce_tol(observed[i], levels_of[j], 0.0) * 2.0;
                // Certain only outside the band: a twin value equal to (or within the band
                // of) the observed one is ambiguous, since the device's f32 sum of the same
                // terms may round differently on real hardware (fused multiply-add of
                // `tfce + sizepow * hpow`): on an H100 a twin value exactly equal to the
                // observed came out just below it. An exact 0 is the exception: it means the
                // voxel never rose above a level, which only compares inputs, so the device
                // has exactly 0 too.
                lo += (x > observed[i] + band || (x == 0.0 && observed[i] <= 0.0)) as u32;
                hi += (x >= observed[i] - band) as u32;
            }
            ambiguous += hi - lo;
            assert!(lo <= d.counts[i] && d.counts[i] <= hi, "voxel {i}: count {} outside [{lo}, {hi}]", d.counts[i]);
            assert!(lo <= tc[i] && tc[i] <= hi);
        }
        let differ = (0..v).filter(|&i| d.counts[i] != tc[i]).count();
        println!("{conn:?}: {ambiguous} (map, voxel) pairs within tolerance of observed; {differ} counts differ");
        // The band must stay narrow for the count check to mean anything (the seventh map is
        // the observed map itself, whose pairs are all near-ties).
        assert!(ambiguous as usize <= 2 * v, "{conn:?}: {ambiguous} of {} pairs ambiguous: band too wide", b * v);
    }
}

/// TFCE with no level at all (nothing positive), in a sub-batch next to one with levels, and
/// on a one-voxel graph: zero maps, maxima 0, as the twin.
#[test]
fn tfce_edge_cases() {
    let Some(mut gs) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let params = TfceParams::default();
    let dims = [7, 6, 5];
    let g = MaskGraph::from_mask(dims, &random_mask(&mut rng, dims, 0.9), Connectivity::C6);
    let (nbrs, width) = neighbour_table(&g);
    let v = g.len();
    let mut maps: Vec<f32> = (0..2 * v).map(|i| if i % 3 == 0 { f32::NAN } else { -1.0 }).collect();
    maps.extend(smooth_maps(&mut rng, &g, 2, true));
    let dh = 0.1;
    gs.tuning.max_maps_per_pass = Some(2);
    let d = gs.tfce_batch(&g, &maps, &params, dh, None).unwrap();
    let mut t = Vec::new();
    for sub in maps.chunks(2 * v) {
        let (hs, hp) = ttfce::level_table(sub, dh, params.h).unwrap();
        t.extend(ttfce::tfce(&nbrs, width, sub, v, &hs, &hp, &ttfce::size_pow_table(v, params.e)));
    }
    assert!(d.tfce[..2 * v].iter().all(|&x| x == 0.0), "no level: zero TFCE");
    assert_eq!(&d.max[..2], &[0.0, 0.0]);
    for (i, (&a, &b)) in d.tfce.iter().zip(&t).enumerate() {
        assert!((a - b).abs() <= tfce_tol(b, 100, 0.0), "voxel-map {i}: GPU {a} vs twin {b}");
    }
    let g1 = MaskGraph::from_mask([1, 1, 1], &[true], Connectivity::C26);
    let d = gs.tfce_batch(&g1, &[3.0, -1.0, 0.25], &params, dh, None).unwrap();
    let (hs, hp) = ttfce::level_table(&[3.0, -1.0, 0.25], dh, params.h).unwrap();
    let (n1, w1) = neighbour_table(&g1);
    let t = ttfce::tfce(&n1, w1, &[3.0, -1.0, 0.25], 1, &hs, &hp, &ttfce::size_pow_table(1, params.e));
    assert_eq!(d.tfce[1], 0.0);
    for (a, b) in d.tfce.iter().zip(&t) {
        assert!((a - b).abs() <= tfce_tol(*b, hs.len(), 0.0), "one voxel: GPU {a} vs twin {b}");
    }
    gs.tuning.max_maps_per_pass = None;
}

#[test]
fn reduce_matches_cpu() {
    let Some(mut gs) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut ws = Workspace::new();
    let dims = [12, 11, 9];
    let mask = random_mask(&mut rng, dims, 0.9);
    let g6 = MaskGraph::from_mask(dims, &mask, Connectivity::C6);
    let g26 = MaskGraph::from_mask(dims, &mask, Connectivity::C26);
    let v = g6.len();
    let obs_map = smooth_maps(&mut rng, &g6, 1, false);
    let opts = TfceOptions { params: TfceParams::default(), exact: false, step: None };
    let dh = voxflip_stats::spatial::tfce_step_from_observed(&obs_map);
    let observed = tfce_stepwise(&g6, &obs_map, &opts.params, dh, &mut ws).unwrap();
    let job = SpatialJob {
        tfce: Some((&g6, opts, dh)),
        tfce_observed: Some(&observed),
        cluster_graph: Some(&g26),
        extent_thr: Some(1.5),
        mass_thr: Some(2.0),
    };
    gs.configure(&job).unwrap();
    gs.tuning.max_maps_per_pass = Some(3);
    let (mut cpu, mut dev) = (SpatialNull::default(), SpatialNull::default());
    for _ in 0..2 {
        let maps = smooth_maps(&mut rng, &g6, 7, false);
        job.reduce(&maps, v, &mut cpu).unwrap();
        gs.reduce(BatchMaps::Host(&maps), v, &mut dev).unwrap();
    }
    assert_eq!(dev.tfce_max.len(), 14);
    assert_eq!(dev.extent_max, cpu.extent_max);
    for (a, b) in dev.mass_max.iter().zip(&cpu.mass_max) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "mass max {a} vs {b}");
    }
    for (a, b) in dev.tfce_max.iter().zip(&cpu.tfce_max) {
        assert!((a - b).abs() <= tfce_tol(*b, 110, *b), "tfce max {a} vs {b}");
    }
    let differ: u32 = dev.tfce_counts.iter().zip(&cpu.tfce_counts).map(|(a, b)| a.abs_diff(*b)).sum();
    println!("reduce: counts differ by {differ} in total over {v} voxels x 14 maps");
    assert!(differ as usize <= v * 14 / 1000 + 2, "counts differ by {differ}");
    assert_eq!(dev.tfce_counts.len(), cpu.tfce_counts.len());
    // The result of a map does not depend on its batch: any sub-batch size gives the same bits.
    let maps = smooth_maps(&mut rng, &g6, 5, false);
    let mut runs = Vec::new();
    for sub in [None, Some(1), Some(2)] {
        gs.tuning.max_maps_per_pass = sub;
        let mut n = SpatialNull::default();
        gs.reduce(BatchMaps::Host(&maps), v, &mut n).unwrap();
        let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        runs.push((bits(&n.tfce_max), n.tfce_counts, bits(&n.extent_max), bits(&n.mass_max)));
    }
    assert!(runs.windows(2).all(|w| w[0] == w[1]), "results depend on the sub-batch size");
    // Exact TFCE is taken too (tests/it/gpu_tfce_exact_twins.rs checks its results).
    let exact = SpatialJob { tfce: Some((&g6, TfceOptions { exact: true, ..opts }, dh)), ..job };
    assert!(gs.configure(&exact).is_ok());
}

/// Time per map of GpuSpatial::reduce (TFCE C6 + extent + mass C26) on a brain-sized grid.
#[test]
#[ignore]
fn timing_reduce_brain_sized() {
    let Some(mut gs) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(5);
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
    let g6 = MaskGraph::from_mask(dims, &mask, Connectivity::C6);
    let g26 = MaskGraph::from_mask(dims, &mask, Connectivity::C26);
    let v = g6.len();
    let nmaps: usize = std::env::var("VOXFLIP_SPATIAL_MAPS").ok().and_then(|s| s.parse().ok()).unwrap_or(4);
    let obs_map = smooth_maps(&mut rng, &g6, 1, false);
    let opts = TfceOptions { params: TfceParams::default(), exact: false, step: None };
    let dh = voxflip_stats::spatial::tfce_step_from_observed(&obs_map);
    let mut ws = Workspace::new();
    let observed = tfce_stepwise(&g6, &obs_map, &opts.params, dh, &mut ws).unwrap();
    let job = SpatialJob {
        tfce: Some((&g6, opts, dh)),
        tfce_observed: Some(&observed),
        cluster_graph: Some(&g26),
        extent_thr: Some(2.3),
        mass_thr: Some(2.3),
    };
    gs.configure(&job).unwrap();
    let maps = smooth_maps(&mut rng, &g6, nmaps, false);
    let mut null = SpatialNull::default();
    gs.reduce(BatchMaps::Host(&maps[..v]), v, &mut null).unwrap(); // warm-up
    gs.take_tfce_work();
    let t0 = std::time::Instant::now();
    gs.reduce(BatchMaps::Host(&maps), v, &mut null).unwrap();
    let gpu_s = t0.elapsed().as_secs_f64();
    let (active, full) = gs.take_tfce_work();
    let t0 = std::time::Instant::now();
    job.reduce(&maps, v, &mut SpatialNull::default()).unwrap();
    let cpu_s = t0.elapsed().as_secs_f64();
    println!(
        "{}: V = {v}, {nmaps} maps: GpuSpatial::reduce {:.1} ms/map; SpatialJob::reduce (CPU, rayon) {:.1} ms/map",
        gs.adapter_info().name,
        gpu_s * 1e3 / nmaps as f64,
        cpu_s * 1e3 / nmaps as f64
    );
    println!(
        "TFCE voxel-levels processed: {active} active of {full} (V x maps x levels), {:.2}%",
        100.0 * active as f64 / full.max(1) as f64
    );
}

/// Maps left on the device by the GPU engine and reduced there (`BatchMaps::Device`, on the
/// engine's own device) give exactly what reducing the same maps from the host gives: same
/// kernels, same maps, and the per-map maxima from the engine fix the same levels and mass
/// scales as the maps themselves.
#[test]
fn device_resident_maps_reduce_like_host_maps() {
    use voxflip_stats::{PermKind, PermSet, StatKind};
    let Some(mut engine) = crate::common::gpu_engine(module_path!()) else { return };
    // A smooth-ish one-sample problem on a 9 x 8 x 5 grid, all voxels in the mask.
    let dims = [9, 8, 5];
    let v = dims[0] * dims[1] * dims[2];
    let n = 14;
    let mut rng = ChaCha8Rng::seed_from_u64(21);
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
    assert_eq!(pb.kind, StatKind::T);
    engine.prepare(&pb).unwrap();
    let perms = PermSet::generate(n, PermKind::SignFlip, &vec![0; n], 30, 9).unwrap();
    let mut host = vec![0f32; 30 * v];
    engine.run_batch(&perms, 0..30, None, Some(&mut host)).unwrap();
    let (res, buf) = engine.run_batch_on_device(&perms, 0..30, None).unwrap();

    let g6 = MaskGraph::from_mask(dims, &vec![true; v], Connectivity::C6);
    let g26 = MaskGraph::from_mask(dims, &vec![true; v], Connectivity::C26);
    let dh = host[..v].iter().copied().fold(0f32, f32::max) / 100.0;
    let opts = TfceOptions { params: TfceParams::default(), exact: false, step: None };
    let observed = vec![0.5f32; v];
    let job = SpatialJob {
        tfce: Some((&g6, opts, dh)),
        tfce_observed: Some(&observed),
        cluster_graph: Some(&g26),
        extent_thr: Some(1.0),
        mass_thr: Some(1.5),
    };
    let mut from_host = SpatialNull::default();
    let mut on_host_device = GpuSpatial::on_device(engine.device().clone()).unwrap();
    on_host_device.configure(&job).unwrap();
    on_host_device.reduce(BatchMaps::Host(&host), v, &mut from_host).unwrap();
    let mut from_device = SpatialNull::default();
    on_host_device.tuning.max_maps_per_pass = Some(7); // sub-batches inside the device buffer too
    on_host_device.reduce(BatchMaps::Device { buf: &buf, maxima: &res.max_stat }, v, &mut from_device).unwrap();
    assert_eq!(from_device.tfce_max, from_host.tfce_max);
    assert_eq!(from_device.tfce_counts, from_host.tfce_counts);
    assert_eq!(from_device.extent_max, from_host.extent_max);
    assert_eq!(from_device.mass_max, from_host.mass_max);
    assert!(from_host.tfce_max.iter().any(|&t| t > 0.0) && from_host.extent_max.iter().any(|&e| e > 1.0));
    // And the CPU reference agrees with both (extents exactly).
    let mut cpu = SpatialNull::default();
    job.reduce(&host, v, &mut cpu).unwrap();
    assert_eq!(cpu.extent_max, from_device.extent_max);
    // A non-positive mass threshold cannot be reduced from device maps: refused, not wrong.
    let job_neg = SpatialJob { mass_thr: Some(-1.0), ..job };
    on_host_device.configure(&job_neg).unwrap();
    assert!(on_host_device
        .reduce(BatchMaps::Device { buf: &buf, maxima: &res.max_stat }, v, &mut SpatialNull::default())
        .is_err());
}
