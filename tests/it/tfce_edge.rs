//! randomise's TFCE at the image edge (`tfce()` in FSL's newimagefns.h visits only
//! x = 1..nx-2, likewise y and z): on masks that touch every face of the grid, voxflip's
//! stepwise TFCE (CPU, the GPU kernels and their CPU port, the TFCE null, and the command
//! line's `_tfce_tstat1`) equals a direct implementation of randomise's definition written
//! here: levels h = 0, dh, 2dh, ... accumulated in f32 while h < max + dh, a flood fill of
//! {t > h} over interior in-mask voxels only, each member adding size^E h^H, the sum kept in
//! f32 as randomise's float volume keeps it. Exact TFCE keeps the same convention: its map
//! over the border-excluding graph equals, voxel for voxel, the exact TFCE over a graph that
//! holds the interior voxels alone.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;
use voxflip_stats::spatial::{
    tfce_exact, tfce_step_from_observed, tfce_stepwise, Connectivity, MaskGraph, SpatialJob, SpatialNull, TfceOptions,
    TfceParams, Workspace,
};

const DIMS: [usize; 3] = [9, 8, 7];

fn lin(x: usize, y: usize, z: usize) -> usize {
    x + DIMS[0] * (y + DIMS[1] * z)
}

fn interior(l: usize) -> bool {
    let (x, y, z) = (l % DIMS[0], (l / DIMS[0]) % DIMS[1], l / (DIMS[0] * DIMS[1]));
    (1..DIMS[0] - 1).contains(&x) && (1..DIMS[1] - 1).contains(&y) && (1..DIMS[2] - 1).contains(&z)
}

/// A mask that reaches all six faces (and holes inside), and `nmaps` smooth maps with
/// blobs across the faces: positive, negative and zero values.
fn mask_and_maps(seed: u64, nmaps: usize) -> (Vec<bool>, Vec<Vec<f32>>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = DIMS.iter().product();
    let mask: Vec<bool> = (0..n).map(|_| rng.random::<f32>() < 0.92).collect();
    let maps = (0..nmaps)
        .map(|_| {
            let centres: Vec<[f32; 4]> = (0..5)
                .map(|_| {
                    let c = [rng.random::<f32>() * 9.0, rng.random::<f32>() * 8.0, rng.random::<f32>() * 7.0];
                    [c[0], c[1], c[2], rng.random::<f32>() * 6.0 - 1.5]
                })
                .collect();
            (0..n)
                .map(|l| {
                    let p = [(l % DIMS[0]) as f32, ((l / DIMS[0]) % DIMS[1]) as f32, (l / (DIMS[0] * DIMS[1])) as f32];
                    let v: f32 = centres
                        .iter()
                        .map(|c| {
                            let d2 = (p[0] - c[0]).powi(2) + (p[1] - c[1]).powi(2) + (p[2] - c[2]).powi(2);
                            c[3] * (-d2 / 6.0).exp()
                        })
                        .sum();
                    v + 0.2 * (rng.random::<f32>() - 0.5)
                })
                .collect()
        })
        .collect();
    (mask, maps)
}

fn face_touching_mask(seed: u64, nmaps: usize) -> (Vec<bool>, Vec<Vec<f32>>) {
    let (mut mask, maps) = mask_and_maps(seed, nmaps);
    // Every face holds in-mask voxels (the random mask nearly surely does; make it sure).
    for (x, y, z) in [(0, 3, 3), (8, 3, 3), (4, 0, 3), (4, 7, 3), (4, 3, 0), (4, 3, 6)] {
        mask[lin(x, y, z)] = true;
    }
    (mask, maps)
}

/// randomise's tfce() on the full grid `map` (0 outside the mask), written from its
/// definition: for h = 0, dh, 2dh, ... (accumulated in f32) while h < max + dh, the
/// 6-connected (or 26-) components of {interior in-mask voxels with t > h}, each member
/// adding size^E h^H (h^H rounded to f32, the product in f64 and added to the f32 sum, as
/// FSL's float volume += a double). `max` is the maximum of the whole volume, as FSL's data.max().
fn randomise_tfce(mask: &[bool], map: &[f32], dh: f32, p: &TfceParams) -> Vec<f32> {
    let n = map.len();
    let max = map.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let conn = p.conn.offsets();
    let mut out = vec![0f32; n];
    let mut h = 0f32;
    while h < max + dh {
        let inset = |l: usize| mask[l] && interior(l) && map[l] > h;
        let mut label = vec![usize::MAX; n];
        let mut sizes = Vec::new();
        for s in 0..n {
            if !inset(s) || label[s] != usize::MAX {
                continue;
            }
            let id = sizes.len();
            let mut q = VecDeque::from([s]);
            label[s] = id;
            let mut size = 0usize;
            while let Some(a) = q.pop_front() {
                size += 1;
                let (x, y, z) =
                    ((a % DIMS[0]) as i64, ((a / DIMS[0]) % DIMS[1]) as i64, (a / (DIMS[0] * DIMS[1])) as i64);
                for d in &conn {
                    let (bx, by, bz) = (x + d[0], y + d[1], z + d[2]);
                    if bx < 0
                        || by < 0
                        || bz < 0
                        || bx >= DIMS[0] as i64
                        || by >= DIMS[1] as i64
                        || bz >= DIMS[2] as i64
                    {
                        continue;
                    }
                    let b = lin(bx as usize, by as usize, bz as usize);
                    if inset(b) && label[b] == usize::MAX {
                        label[b] = id;
                        q.push_back(b);
                    }
                }
            }
            sizes.push(size);
        }
        // FSL: `float HH = pow(curThr, H)`, rounded to f32; the sizes' powers in double.
        let hh = (h as f64).powf(p.h as f64) as f32 as f64;
        for l in 0..n {
            if label[l] != usize::MAX {
                out[l] = (out[l] as f64 + (sizes[label[l]] as f64).powf(p.e as f64) * hh) as f32;
            }
        }
        h += dh;
    }
    out
}

/// voxflip's in-mask map against the oracle's full-grid map. Tolerance: the oracle rounds its
/// f32 sum once per level (at most ~101 levels at dh = max / 100, 2^-24 relative each), and
/// voxflip rounds its f64 sum once, so (L + 2) 2^-24 relative of the voxel's value, plus
/// 1e-7 of the map's maximum TFCE for the cancellation residue of voxflip's offsets.
fn assert_matches(what: &str, g: &MaskGraph, ours: &[f32], oracle: &[f32], levels: usize) {
    let top = oracle.iter().copied().fold(0f32, f32::max);
    assert!(top > 0.0, "{what}: the oracle enhances nothing (test data too weak)");
    for (v, &l) in g.voxels.iter().enumerate() {
        let (a, b) = (ours[v], oracle[l as usize]);
        let tol = (levels + 2) as f32 * 2f32.powi(-24) * b.abs() + 1e-7 * top;
        assert!((a - b).abs() <= tol, "{what}: voxel {v} (grid {l}): voxflip {a}, randomise {b}");
        if !interior(l as usize) {
            assert_eq!(a, 0.0, "{what}: border voxel {l} must get TFCE 0");
        }
    }
}

/// The in-mask values of `map` (full grid).
fn in_mask(g: &MaskGraph, full: &[f32]) -> Vec<f32> {
    g.voxels.iter().map(|&l| full[l as usize]).collect()
}

#[test]
fn cpu_stepwise_tfce_skips_the_grid_border_as_randomise() {
    for (seed, conn) in [(1, Connectivity::C6), (2, Connectivity::C26), (3, Connectivity::C6)] {
        let (mask, maps) = face_touching_mask(seed, 1);
        let full: Vec<f32> = maps[0].iter().zip(&mask).map(|(&x, &m)| if m { x } else { 0.0 }).collect();
        let plain = MaskGraph::from_mask(DIMS, &mask, conn);
        let g = plain.without_grid_border();
        let p = TfceParams { conn, ..TfceParams::default() };
        let map = in_mask(&g, &full);
        let dh = tfce_step_from_observed(&map);
        let oracle = randomise_tfce(&mask, &full, dh, &p);
        let ours = tfce_stepwise(&g, &map, &p, dh, &mut Workspace::new()).unwrap();
        assert_matches(&format!("seed {seed} {conn:?}"), &g, &ours, &oracle, 102);
        // The test can tell the rules apart: enhancing every voxel gives another map.
        let include = tfce_stepwise(&plain, &map, &p, dh, &mut Workspace::new()).unwrap();
        let differ = include.iter().zip(&ours).filter(|(a, b)| (*a - *b).abs() > 1e-3 * b.abs().max(1.0)).count();
        assert!(differ > 0, "seed {seed}: the border rule changed nothing; the data do not test it");
    }
}

/// Exact TFCE over the border-excluding graph: 0 on the border, and the interior equals the
/// exact TFCE over the graph of the interior voxels alone (an independent construction:
/// those voxels are not in that graph at all). The same bits: the same values in the same
/// order through the same component tree.
#[test]
fn exact_tfce_keeps_the_same_border_convention() {
    let (mask, maps) = face_touching_mask(4, 1);
    let g = MaskGraph::from_mask(DIMS, &mask, Connectivity::C6).without_grid_border();
    let inner_mask: Vec<bool> = mask.iter().enumerate().map(|(l, &m)| m && interior(l)).collect();
    let inner = MaskGraph::from_mask(DIMS, &inner_mask, Connectivity::C6);
    let full: Vec<f32> = maps[0].iter().zip(&mask).map(|(&x, &m)| if m { x } else { 0.0 }).collect();
    let p = TfceParams::default();
    let ours = tfce_exact(&g, &in_mask(&g, &full), &p, &mut Workspace::new());
    let theirs = tfce_exact(&inner, &in_mask(&inner, &full), &p, &mut Workspace::new());
    let mut at = 0;
    for (v, &l) in g.voxels.iter().enumerate() {
        if interior(l as usize) {
            assert_eq!(inner.voxels[at], l);
            assert_eq!(ours[v].to_bits(), theirs[at].to_bits(), "voxel {l}");
            at += 1;
        } else {
            assert_eq!(ours[v], 0.0, "border voxel {l}");
        }
    }
    assert!(theirs.iter().any(|&x| x > 0.0), "nothing enhanced: the data do not test it");
}

/// The TFCE null (the maximum TFCE of each permutation's map) follows the same rule: each
/// map's maximum is the maximum of the oracle's map.
#[test]
fn tfce_null_uses_the_border_rule() {
    let (mask, maps) = face_touching_mask(5, 4);
    let g = MaskGraph::from_mask(DIMS, &mask, Connectivity::C6).without_grid_border();
    let opts = TfceOptions { params: TfceParams::default(), exact: false, step: None };
    let batch: Vec<f32> = maps.iter().flat_map(|m| in_mask(&g, m)).collect();
    let dh = tfce_step_from_observed(&batch[..g.len()]);
    let job = SpatialJob {
        tfce: Some((&g, opts, dh)),
        tfce_observed: None,
        cluster_graph: None,
        extent_thr: None,
        mass_thr: None,
    };
    let mut null = SpatialNull::default();
    job.reduce(&batch, g.len(), &mut null).unwrap();
    for (j, m) in maps.iter().enumerate() {
        let full: Vec<f32> = m.iter().zip(&mask).map(|(&x, &k)| if k { x } else { 0.0 }).collect();
        let top = randomise_tfce(&mask, &full, dh, &opts.params).into_iter().fold(0f32, f32::max);
        // Tolerance as in `assert_matches`: levels here reach the map's own max / dh.
        let levels = (full.iter().copied().fold(0f32, f32::max) / dh) as usize + 2;
        let tol = (levels + 2) as f32 * 2f32.powi(-24) * top + 1e-7 * top;
        assert!((null.tfce_max[j] - top).abs() <= tol, "map {j}: null max {} vs randomise {top}", null.tfce_max[j]);
    }
}

/// The GPU kernels (stepwise and exact) and the CPU port of the stepwise kernel on the
/// border-excluding graph: the oracle's maps (stepwise), and 0 on the border (exact), and
/// the reducer's null maxima.
#[test]
fn gpu_tfce_skips_the_grid_border_as_randomise() {
    let (mask, maps) = face_touching_mask(6, 3);
    let g = MaskGraph::from_mask(DIMS, &mask, Connectivity::C6).without_grid_border();
    let p = TfceParams::default();
    let v = g.len();
    let batch: Vec<f32> = maps.iter().flat_map(|m| in_mask(&g, m)).collect();
    let dh = tfce_step_from_observed(&batch[..v]);
    let oracles: Vec<Vec<f32>> = maps
        .iter()
        .map(|m| {
            let full: Vec<f32> = m.iter().zip(&mask).map(|(&x, &k)| if k { x } else { 0.0 }).collect();
            randomise_tfce(&mask, &full, dh, &p)
        })
        .collect();
    // Levels: up to the batch's maximum / dh.
    let levels = (batch.iter().copied().fold(0f32, f32::max) / dh) as usize + 2;
    // The CPU port of tfce.wgsl (runs without an adapter).
    let (nbrs, width) = voxflip_shaders::spatial::neighbour_table(&g);
    let (hs, hpow) = voxflip_shaders::cpu::tfce::level_table(&batch, dh, p.h).unwrap();
    let sizepow = voxflip_shaders::cpu::tfce::size_pow_table(v, p.e);
    let port = voxflip_shaders::cpu::tfce::tfce(&nbrs, width, &batch, v, &hs, &hpow, &sizepow);
    for (j, o) in oracles.iter().enumerate() {
        assert_matches(&format!("CPU port, map {j}"), &g, &port[j * v..(j + 1) * v], o, levels);
    }
    let Some(mut gs) = crate::common::gpu_spatial(module_path!()) else { return };
    let out = gs.tfce_batch(&g, &batch, &p, dh, None).unwrap();
    for (j, o) in oracles.iter().enumerate() {
        assert_matches(&format!("GPU, map {j}"), &g, &out.tfce[j * v..(j + 1) * v], o, levels);
    }
    let exact = gs.tfce_exact_batch(&g, &batch, &p, None).unwrap();
    let cpu_exact: Vec<f32> =
        (0..maps.len()).flat_map(|j| tfce_exact(&g, &batch[j * v..(j + 1) * v], &p, &mut Workspace::new())).collect();
    for (i, (&a, &b)) in exact.tfce.iter().zip(&cpu_exact).enumerate() {
        let l = g.voxels[i % v] as usize;
        if !interior(l) {
            assert_eq!(a, 0.0, "GPU exact TFCE at border voxel {l}");
        }
        // GPU exact vs the CPU's exact TFCE: tests/it/gpu_tfce_exact_twins.rs bounds their
        // difference at 1e-5 relative of the map's maximum; the same bound here.
        let top = cpu_exact[(i / v) * v..(i / v + 1) * v].iter().copied().fold(0f32, f32::max);
        assert!((a - b).abs() <= 1e-5 * top, "GPU exact at voxel {l}: {a} vs CPU {b}");
    }
    let opts = TfceOptions { params: p, exact: false, step: None };
    let job = SpatialJob {
        tfce: Some((&g, opts, dh)),
        tfce_observed: None,
        cluster_graph: None,
        extent_thr: None,
        mass_thr: None,
    };
    gs.configure(&job).unwrap();
    let mut null = SpatialNull::default();
    gs.reduce(voxflip_engines::gpu::spatial::BatchMaps::Host(&batch), v, &mut null).unwrap();
    for (j, o) in oracles.iter().enumerate() {
        let top = o.iter().copied().fold(0f32, f32::max);
        let tol = (levels + 2) as f32 * 2f32.powi(-24) * top + 1e-7 * top;
        assert!((null.tfce_max[j] - top).abs() <= tol, "GPU null max of map {j}: {} vs {top}", null.tfce_max[j]);
    }
}

/// The command line: `-T` writes randomise's border rule by default (the oracle applied to
/// the written t map) and `--tfce-edge include` enhances every voxel (the library's TFCE over
/// the whole mask graph).
#[test]
fn command_line_tfce_edge_default_and_include() {
    let dir = voxflip_testkit::tempdir().unwrap();
    let (mask, maps) = face_touching_mask(7, 1);
    let n = 10;
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let nvox: usize = DIMS.iter().product();
    // One-sample data whose mean follows the smooth map: the t map has blobs across faces.
    let data: Vec<f32> = (0..n * nvox).map(|k| 0.6 * maps[0][k % nvox] + rng.random::<f32>() - 0.5).collect();
    let affine = [[2.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]];
    let h = voxflip_io::header_from_affine(DIMS, [2.0, 2.0, 2.0], affine, 4);
    voxflip_io::write_image(&dir.path().join("in.nii.gz"), &h, DIMS, n, &data).unwrap();
    let m: Vec<f32> = mask.iter().map(|&k| k as u8 as f32).collect();
    voxflip_io::write_image(&dir.path().join("mask.nii.gz"), &h, DIMS, 1, &m).unwrap();
    for (out, extra) in [("skip", None), ("incl", Some("include"))] {
        let mut args =
            vec!["-i", "in.nii.gz", "-m", "mask.nii.gz", "-o", out, "-1", "-T", "-n", "20", "--backend", "cpu"];
        if let Some(e) = extra {
            args.extend(["--tfce-edge", e]);
        }
        let o = crate::common::voxflip(dir.path(), &args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let read = |name: &str| voxflip_io::read_image(&dir.path().join(name)).unwrap().data;
    let t = read("skip_tstat1.nii.gz");
    let p = TfceParams::default();
    let plain = MaskGraph::from_mask(DIMS, &mask, Connectivity::C6);
    let dh = tfce_step_from_observed(&in_mask(&plain, &t));
    let oracle = randomise_tfce(&mask, &t, dh, &p);
    let skip = read("skip_tfce_tstat1.nii.gz");
    assert_matches("voxflip -T", &plain, &in_mask(&plain, &skip), &oracle, 102);
    let incl = in_mask(&plain, &read("incl_tfce_tstat1.nii.gz"));
    let want = tfce_stepwise(&plain, &in_mask(&plain, &t), &p, dh, &mut Workspace::new()).unwrap();
    assert_eq!(incl, want, "--tfce-edge include: TFCE over every in-mask voxel");
}
