//! The spatial statistics held against slow, independent oracles.
//!
//! The oracles work on the dense grid with a breadth-first flood fill and their own
//! neighbour rule (count the non-zero offset components: 1 for faces, 2 for edges, 3 for
//! corners), sharing no code with the union-find implementations under test.

use std::collections::VecDeque;

use super::*;

// ---------------------------------------------------------------------------------------
// Test data

/// splitmix64: a tiny deterministic generator, so the tests need no RNG crate API.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// A dense image with a mask; `map()` gives the in-mask vector the functions take.
struct Image {
    dims: [usize; 3],
    mask: Vec<bool>,
    values: Vec<f32>,
}

impl Image {
    fn n(&self) -> usize {
        self.dims.iter().product()
    }
    fn graph(&self, conn: Connectivity) -> MaskGraph {
        MaskGraph::from_mask(self.dims, &self.mask, conn)
    }
    fn map(&self) -> Vec<f32> {
        (0..self.n()).filter(|&i| self.mask[i]).map(|i| self.values[i]).collect()
    }
    fn lin(&self, x: usize, y: usize, z: usize) -> usize {
        x + self.dims[0] * (y + self.dims[1] * z)
    }
    /// Only the listed voxels in the mask, with value 1.
    fn from_voxels(dims: [usize; 3], voxels: &[[usize; 3]]) -> Self {
        let n = dims.iter().product();
        let mut img = Image { dims, mask: vec![false; n], values: vec![0.0; n] };
        for &[x, y, z] in voxels {
            let i = img.lin(x, y, z);
            img.mask[i] = true;
            img.values[i] = 1.0;
        }
        img
    }
}

/// Box-smoothed Gaussian noise (so clusters and TFCE have structure), scaled to unit sd
/// and shifted by `shift` sd; random mask of the given density.
fn smooth_image(rng: &mut Rng, dims: [usize; 3], mask_density: f64, passes: usize, shift: f64) -> Image {
    let n: usize = dims.iter().product();
    let mut v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
    let strides = [1, dims[0], dims[0] * dims[1]];
    for _ in 0..passes {
        for axis in 0..3 {
            let mut out = vec![0.0; n];
            for i in 0..n {
                let c = [i % dims[0], (i / dims[0]) % dims[1], i / (dims[0] * dims[1])];
                let mut s = v[i];
                let mut k = 1.0;
                if c[axis] > 0 {
                    s += v[i - strides[axis]];
                    k += 1.0;
                }
                if c[axis] + 1 < dims[axis] {
                    s += v[i + strides[axis]];
                    k += 1.0;
                }
                out[i] = s / k;
            }
            v = out;
        }
    }
    let mean = v.iter().sum::<f64>() / n as f64;
    let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64).sqrt().max(1e-12);
    let values = v.iter().map(|x| ((x - mean) / sd + shift) as f32).collect();
    let mask = (0..n).map(|_| rng.uniform() < mask_density).collect();
    Image { dims, mask, values }
}

// ---------------------------------------------------------------------------------------
// Oracle: breadth-first flood fill on the dense grid

fn touches(conn: Connectivity, d: [i64; 3]) -> bool {
    let nonzero = d.iter().filter(|&&c| c != 0).count();
    let limit = match conn {
        Connectivity::C6 => 1,
        Connectivity::C18 => 2,
        Connectivity::C26 => 3,
    };
    nonzero >= 1 && nonzero <= limit
}

/// Components of the in-mask grid voxels selected by `inside` (grid index), each as a
/// sorted list of grid indices, listed in order of their smallest grid index.
fn flood_components(img: &Image, conn: Connectivity, inside: impl Fn(usize) -> bool) -> Vec<Vec<usize>> {
    let n = img.n();
    let [nx, ny, nz] = img.dims;
    let mut seen = vec![false; n];
    let mut comps = Vec::new();
    for start in 0..n {
        if seen[start] || !img.mask[start] || !inside(start) {
            continue;
        }
        let mut comp = vec![];
        let mut queue = VecDeque::from([start]);
        seen[start] = true;
        while let Some(i) = queue.pop_front() {
            comp.push(i);
            let (x, y, z) = ((i % nx) as i64, ((i / nx) % ny) as i64, (i / (nx * ny)) as i64);
            for dz in -1..=1i64 {
                for dy in -1..=1i64 {
                    for dx in -1..=1i64 {
                        if !touches(conn, [dx, dy, dz]) {
                            continue;
                        }
                        let (qx, qy, qz) = (x + dx, y + dy, z + dz);
                        if qx < 0 || qy < 0 || qz < 0 || qx >= nx as i64 || qy >= ny as i64 || qz >= nz as i64 {
                            continue;
                        }
                        let q = img.lin(qx as usize, qy as usize, qz as usize);
                        if !seen[q] && img.mask[q] && inside(q) {
                            seen[q] = true;
                            queue.push_back(q);
                        }
                    }
                }
            }
        }
        comp.sort_unstable();
        comps.push(comp);
    }
    comps
}

/// Expected in-mask labels: components ordered by decreasing size, ties by smallest index.
fn oracle_labels(img: &Image, conn: Connectivity, thr: f32) -> (Vec<u32>, u32) {
    let mut comps = flood_components(img, conn, |i| img.values[i] >= thr);
    comps.sort_by(|a, b| b.len().cmp(&a.len()).then(a[0].cmp(&b[0])));
    let mut dense = vec![0u32; img.n()];
    for (k, c) in comps.iter().enumerate() {
        for &i in c {
            dense[i] = k as u32 + 1;
        }
    }
    let labels = (0..img.n()).filter(|&i| img.mask[i]).map(|i| dense[i]).collect();
    (labels, comps.len() as u32)
}

const ALL_CONN: [Connectivity; 3] = [Connectivity::C6, Connectivity::C18, Connectivity::C26];

/// Labels, extent and mass all agree with the oracle on this image.
fn check_against_oracle(img: &Image, thr: f32, what: &str) {
    let mut ws = Workspace::new();
    for conn in ALL_CONN {
        let g = img.graph(conn);
        let map = img.map();
        let (labels, n) = label_components(&g, &map, thr, &mut ws);
        let (want_labels, want_n) = oracle_labels(img, conn, thr);
        assert_eq!(n, want_n, "{what}, {conn:?}: number of clusters");
        assert_eq!(labels, want_labels, "{what}, {conn:?}: labels");

        let comps = flood_components(img, conn, |i| img.values[i] >= thr);
        let want_extent = comps.iter().map(|c| c.len() as u32).max().unwrap_or(0);
        let want_mass = comps
            .iter()
            .map(|c| c.iter().map(|&i| img.values[i] as f64).sum::<f64>())
            .fold(0.0f64, |a, b| if b > a || a == 0.0 { b } else { a });
        let (extent, mass) = cluster_sizes_masses(&g, &map, thr, &mut ws);
        assert_eq!(extent, want_extent, "{what}, {conn:?}: max extent");
        let tol = 1e-6 * want_mass.abs().max(1.0);
        assert!((mass as f64 - want_mass).abs() <= tol, "{what}, {conn:?}: max mass {mass} vs {want_mass}");
    }
}

// ---------------------------------------------------------------------------------------
// Labelling, extent and mass

#[test]
fn labels_match_flood_fill_on_random_masks() {
    let mut rng = Rng(1);
    for trial in 0..40 {
        let dims = [3 + trial % 7, 2 + (trial * 3) % 8, 1 + (trial * 5) % 6];
        let density = 0.5 + 0.5 * rng.uniform();
        let img = smooth_image(&mut rng, dims, density, trial % 3, 0.0);
        for thr in [-0.5f32, 0.0, 0.7, 1.5] {
            check_against_oracle(&img, thr, &format!("trial {trial} thr {thr}"));
        }
    }
}

#[test]
fn labels_match_flood_fill_on_white_noise() {
    // Unsmoothed noise: many tiny clusters touching in every possible way.
    let mut rng = Rng(2);
    for trial in 0..20 {
        let img = smooth_image(&mut rng, [9, 8, 7], 0.9, 0, 0.0);
        check_against_oracle(&img, 0.0, &format!("noise trial {trial}"));
    }
}

#[test]
fn touching_by_face_edge_corner() {
    // Two voxels; how many clusters under (C6, C18, C26).
    let cases: [([usize; 3], [usize; 3], [u32; 3]); 3] = [
        ([1, 1, 1], [2, 1, 1], [1, 1, 1]), // face
        ([1, 1, 1], [2, 2, 1], [2, 1, 1]), // edge
        ([1, 1, 1], [2, 2, 2], [2, 2, 1]), // corner
    ];
    let mut ws = Workspace::new();
    for (a, b, want) in cases {
        let img = Image::from_voxels([4, 4, 4], &[a, b]);
        for (conn, &w) in ALL_CONN.iter().zip(&want) {
            let (_, n) = label_components(&img.graph(*conn), &img.map(), 0.5, &mut ws);
            assert_eq!(n, w, "{a:?}-{b:?} under {conn:?}");
        }
        check_against_oracle(&img, 0.5, &format!("{a:?}-{b:?}"));
    }
}

#[test]
fn no_wrap_around_at_the_grid_border() {
    // (3,0,0) and (0,1,0) are consecutive linear indices but far apart; likewise the last
    // voxel of one slice and the first of the next.
    let dims = [4, 3, 2];
    let img = Image::from_voxels(dims, &[[3, 0, 0], [0, 1, 0], [3, 2, 0], [0, 0, 1], [3, 2, 1]]);
    // Only (3,2,0)-(3,2,1) touch by a face and (0,1,0)-(0,0,1) by an edge.
    let mut ws = Workspace::new();
    for (conn, want) in ALL_CONN.into_iter().zip([4, 3, 3]) {
        let (_, n) = label_components(&img.graph(conn), &img.map(), 0.5, &mut ws);
        assert_eq!(n, want, "{conn:?}");
    }
    check_against_oracle(&img, 0.5, "border");
    // Every face of the grid filled: the border voxels form one shell.
    let full = Image { dims: [5, 4, 3], mask: vec![true; 60], values: vec![1.0; 60] };
    check_against_oracle(&full, 0.5, "full grid");
}

#[test]
fn single_isolated_voxels_and_checkerboard() {
    // A 3-D checkerboard: isolated under C6, all touching by edges under C18.
    let dims = [6, 5, 4];
    let n = 120;
    let mut img = Image { dims, mask: vec![true; n], values: vec![0.0; n] };
    for i in 0..n {
        let (x, y, z) = (i % 6, (i / 6) % 5, i / 30);
        img.values[i] = if (x + y + z) % 2 == 0 { 1.0 + i as f32 * 0.01 } else { -1.0 };
    }
    let mut ws = Workspace::new();
    let (_, n6) = label_components(&img.graph(Connectivity::C6), &img.map(), 0.0, &mut ws);
    assert_eq!(n6, 60);
    let (_, n18) = label_components(&img.graph(Connectivity::C18), &img.map(), 0.0, &mut ws);
    assert_eq!(n18, 1);
    check_against_oracle(&img, 0.0, "checkerboard");
}

#[test]
fn mask_gaps_separate_clusters() {
    // A supra-threshold line whose middle voxel is outside the mask: two clusters.
    let dims = [7, 3, 3];
    let n = 63;
    let mut img = Image { dims, mask: vec![true; n], values: vec![0.0; n] };
    for x in 0..7 {
        let i = img.lin(x, 1, 1);
        img.values[i] = 2.0;
    }
    let mid = img.lin(3, 1, 1);
    img.mask[mid] = false;
    for conn in ALL_CONN {
        let (_, k) = label_components(&img.graph(conn), &img.map(), 1.0, &mut Workspace::new());
        assert_eq!(k, 2, "{conn:?}");
    }
    check_against_oracle(&img, 1.0, "mask gap");
}

/// A square spiral in each of three slices, the slices joined at one corner each: one long
/// face-connected path, the worst case for merge order in a scan.
fn spiral_image() -> Image {
    let (nx, ny, nz) = (11, 11, 5);
    let mut voxels = Vec::new();
    for z in [0usize, 2, 4] {
        // Rings at distance 0, 2, 4 from the border, each open at one corner and joined
        // to the next ring inwards.
        let mut cells = vec![vec![false; nx]; ny];
        let (mut lo, mut hi) = (0usize, nx - 1);
        while lo <= hi {
            for t in lo..=hi {
                cells[lo][t] = true;
                cells[hi][t] = true;
                cells[t][lo] = true;
                cells[t][hi] = true;
            }
            if lo + 2 <= hi {
                cells[lo + 1][lo] = false; // open the ring ...
                cells[lo + 1][lo + 1] = true; // ... and step inwards
            }
            lo += 2;
            if hi < 2 {
                break;
            }
            hi -= 2;
        }
        for (y, row) in cells.iter().enumerate() {
            for (x, &c) in row.iter().enumerate() {
                if c {
                    voxels.push([x, y, z]);
                }
            }
        }
        if z + 1 < nz {
            voxels.push([0, 0, z + 1]);
        }
    }
    Image::from_voxels([nx, ny, nz], &voxels)
}

#[test]
fn spiral() {
    let mut img = spiral_image();
    check_against_oracle(&img, 0.5, "spiral");
    // Values decreasing along the grid order so merges happen in awkward order for TFCE.
    for i in 0..img.n() {
        if img.mask[i] {
            img.values[i] = 1.0 + ((i * 7919) % 101) as f32 / 10.0;
        }
    }
    check_against_oracle(&img, 5.0, "spiral, valued");
    check_tfce_stepwise(&img, 0.1, "spiral");
}

// ---------------------------------------------------------------------------------------
// TFCE

/// Stepwise TFCE by definition: for each threshold (0, dh, 2dh, ... accumulated in f32 as
/// FSL does) below the map maximum, flood-fill {T > h} and add e^E h^H to its voxels.
fn naive_stepwise(img: &Image, p: &TfceParams, dh: f32) -> Vec<f64> {
    let max = (0..img.n()).filter(|&i| img.mask[i]).map(|i| img.values[i]).fold(f32::MIN, f32::max);
    let mut tfce = vec![0.0f64; img.n()];
    let mut h = 0.0f32;
    while h < max {
        for comp in flood_components(img, p.conn, |i| img.values[i] > h) {
            let add = (comp.len() as f64).powf(p.e as f64) * (h as f64).powf(p.h as f64);
            for &i in &comp {
                tfce[i] += add;
            }
        }
        h += dh;
    }
    (0..img.n()).filter(|&i| img.mask[i]).map(|i| tfce[i]).collect()
}

/// Fast stepwise equals the naive sum within 1e-5 relative. Both decide level membership
/// with the same f32 thresholds and the same strict comparison, so they sum the same
/// terms; what remains is rounding: the fast version adds the terms in another order in
/// f64 (relative error ~1e-15 even after the offset cancellation on merges, which is
/// bounded by 1e-16 × root offset / value) and rounds once to f32 (≤ 6e-8 relative).
/// 1e-5 is therefore generous, yet any wrong component size or level is far above it.
/// An absolute 1e-12 × the map's largest value covers voxels whose true value is tiny
/// next to the root offset that was subtracted and added back for them.
fn check_tfce_stepwise(img: &Image, dh: f32, what: &str) {
    let mut ws = Workspace::new();
    for params in [TfceParams::default(), TfceParams::t2(), TfceParams { h: 1.5, e: 0.75, conn: Connectivity::C18 }] {
        let g = img.graph(params.conn);
        let got = tfce_stepwise(&g, &img.map(), &params, dh, &mut ws).unwrap();
        let want = naive_stepwise(img, &params, dh);
        let scale = want.iter().copied().fold(0.0f64, f64::max);
        for (v, (&a, &b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a as f64 - b).abs() <= 1e-5 * b.abs() + 1e-12 * scale,
                "{what} {params:?} dh {dh}: voxel {v}: fast {a} vs naive {b}"
            );
        }
        let want_max = want.iter().copied().fold(0.0f64, f64::max);
        let got_max = tfce_stepwise_max(&g, &img.map(), &params, dh, &mut ws).unwrap();
        assert!((got_max as f64 - want_max).abs() <= 1e-5 * want_max, "{what}: max {got_max} vs {want_max}");
    }
}

#[test]
fn tfce_stepwise_matches_naive_on_smooth_images() {
    let mut rng = Rng(3);
    for trial in 0..12 {
        let dims = [6 + trial % 4, 5 + trial % 3, 4 + trial % 2];
        let img = smooth_image(&mut rng, dims, 0.85, 1 + trial % 3, 0.3);
        let max = img.map().into_iter().fold(f32::MIN, f32::max);
        // The observed map's own step, and a step from a "different observed map", so that
        // this one needs more than 100 levels or far fewer.
        for dh in [max / 100.0, max / 250.0, max / 7.0] {
            check_tfce_stepwise(&img, dh, &format!("trial {trial}"));
        }
    }
}

#[test]
fn tfce_stepwise_values_on_the_thresholds() {
    // Every value sits exactly on an accumulated f32 level, so the strict comparison
    // decides every voxel's top level; an off-by-one level shows up at once.
    let mut rng = Rng(4);
    let dh = 0.1f32;
    let mut levels = vec![0.0f32];
    for _ in 0..40 {
        let next = levels.last().unwrap() + dh;
        levels.push(next);
    }
    let mut img = smooth_image(&mut rng, [7, 6, 5], 0.9, 1, 0.0);
    for i in 0..img.n() {
        let k = (rng.uniform() * 41.0) as usize;
        img.values[i] = if rng.uniform() < 0.2 { -levels[k] } else { levels[k.min(40)] };
    }
    check_tfce_stepwise(&img, dh, "on-level values");
    // Zero, negative and non-finite voxels get nothing; finite neighbours are unaffected.
    img.values[0] = f32::NAN;
    img.values[1] = f32::INFINITY;
    img.mask[0] = true;
    img.mask[1] = true;
    let g = img.graph(Connectivity::C6);
    let out = tfce_stepwise(&g, &img.map(), &TfceParams::default(), dh, &mut Workspace::new()).unwrap();
    assert_eq!(out[0], 0.0);
    assert_eq!(out[1], 0.0);
}

#[test]
fn tfce_without_positive_voxels_or_step_is_zero() {
    let img = Image { dims: [3, 3, 3], mask: vec![true; 27], values: vec![-1.0; 27] };
    let g = img.graph(Connectivity::C6);
    let p = TfceParams::default();
    let mut ws = Workspace::new();
    assert!(tfce_stepwise(&g, &img.map(), &p, 0.1, &mut ws).unwrap().iter().all(|&x| x == 0.0));
    assert!(tfce_exact(&g, &img.map(), &p, &mut ws).iter().all(|&x| x == 0.0));
    assert_eq!(tfce_stepwise_max(&g, &img.map(), &p, 0.1, &mut ws).unwrap(), 0.0);
    let pos = vec![1.0f32; 27];
    assert!(tfce_stepwise(&g, &pos, &p, 0.0, &mut ws).unwrap().iter().all(|&x| x == 0.0));
    assert_eq!(tfce_step_from_observed(&img.map()), 0.0);
    assert_eq!(tfce_step_from_observed(&[-3.0, 2.0, f32::INFINITY, f32::NAN]), 0.02);
}

#[test]
fn tfce_exact_closed_forms() {
    // One isolated voxel of height a: ∫_0^a h^H dh = a^{H+1}/(H+1).
    // Two face neighbours a > b: the top voxel gets ∫_0^b 2^E h^H + ∫_b^a h^H, the other
    // ∫_0^b 2^E h^H.
    let img = Image { dims: [4, 1, 1], mask: vec![true; 4], values: vec![3.0, -1.0, 2.5, 1.5] };
    let p = TfceParams::default();
    let (h, e) = (p.h as f64, p.e as f64);
    let out = tfce_exact(&img.graph(Connectivity::C6), &img.map(), &p, &mut Workspace::new());
    let prim = |x: f64| x.powf(h + 1.0) / (h + 1.0);
    let want = [prim(3.0), 0.0, 2f64.powf(e) * prim(1.5) + prim(2.5) - prim(1.5), 2f64.powf(e) * prim(1.5)];
    for v in 0..4 {
        assert!((out[v] as f64 - want[v]).abs() <= 1e-6 * want[v], "voxel {v}: {} vs {}", out[v], want[v]);
    }
}

/// The stepwise sum × dh in f64 with thresholds k·dh (k ≥ 1) and {T >= h}, computed from
/// the components at each distinct value (they do not change between two distinct values).
fn riemann_tfce(img: &Image, p: &TfceParams, dh: f64) -> Vec<f64> {
    let vox: Vec<usize> = (0..img.n()).filter(|&i| img.mask[i]).collect();
    let mut distinct: Vec<f32> = vox.iter().map(|&i| img.values[i]).filter(|&x| x > 0.0).collect();
    distinct.sort_by(|a, b| b.total_cmp(a));
    distinct.dedup();
    // size[j][i]: size of the component of {T >= distinct[j]} holding grid voxel i.
    let sizes: Vec<Vec<usize>> = distinct
        .iter()
        .map(|&u| {
            let mut s = vec![0usize; img.n()];
            for c in flood_components(img, p.conn, |i| img.values[i] >= u) {
                for &i in &c {
                    s[i] = c.len();
                }
            }
            s
        })
        .collect();
    let mut out = vec![0.0f64; img.n()];
    let max = distinct.first().copied().unwrap_or(0.0) as f64;
    let mut j = distinct.len(); // index of the smallest distinct value >= h, counted below
    let mut k = 1u64;
    loop {
        let h = k as f64 * dh;
        if h > max {
            break;
        }
        // {T >= h} = {T >= smallest distinct value >= h}.
        while j > 0 && (distinct[j - 1] as f64) < h {
            j -= 1;
        }
        while j < distinct.len() && (distinct[j] as f64) >= h {
            j += 1;
        }
        let level = j - 1;
        let hw = h.powf(p.h as f64) * dh;
        for &i in &vox {
            if img.values[i] as f64 >= h {
                out[i] += (sizes[level][i] as f64).powf(p.e as f64) * hw;
            }
        }
        k += 1;
    }
    let size0 = sizes.last().cloned().unwrap_or_else(|| vec![0; img.n()]);
    vox.iter().map(|&i| out[i]).chain(vox.iter().map(|&i| size0[i] as f64)).collect()
}

/// Exact TFCE is the dh -> 0 limit of stepwise × dh. For voxel v with height m and
/// component size e0 at height 0+, f(h) = e(h)^E h^H has total variation at most
/// 2·e0^E·m^H on [0, m] (a non-increasing factor in [1, e0^E] times an increasing one in
/// [0, m^H]), so a right Riemann sum with step dh is within (TV + max f)·dh
/// ≤ 3·dh·e0^E·m^H of the integral. Add 1e-6 relative for the f32 output.
#[test]
fn tfce_exact_is_the_limit_of_stepwise_times_dh() {
    let mut rng = Rng(5);
    for trial in 0..6 {
        let img = smooth_image(&mut rng, [6, 5, 4 + trial % 2], 0.85, 1 + trial % 2, 0.3);
        let max = img.map().into_iter().fold(f32::MIN, f32::max) as f64;
        for params in [TfceParams::default(), TfceParams::t2(), TfceParams { h: 1.5, e: 0.75, conn: Connectivity::C18 }]
        {
            let g = img.graph(params.conn);
            let got = tfce_exact(&g, &img.map(), &params, &mut Workspace::new());
            let dh = max / 20_000.0;
            let both = riemann_tfce(&img, &params, dh);
            let (want, e0) = both.split_at(got.len());
            let map = img.map();
            let mut max_tol = 0.0f64;
            for v in 0..got.len() {
                let m = map[v].max(0.0) as f64;
                let tol = 3.0 * dh * e0[v].powf(params.e as f64) * m.powf(params.h as f64) + 1e-6 * want[v];
                let err = (got[v] as f64 - want[v]).abs();
                assert!(
                    err <= tol,
                    "trial {trial} {params:?} voxel {v}: exact {} vs limit {} (tol {tol})",
                    got[v],
                    want[v]
                );
                max_tol = max_tol.max(tol);
            }
            let want_max = want.iter().copied().fold(0.0, f64::max);
            let got_max = tfce_exact_max(&g, &map, &params, &mut Workspace::new()) as f64;
            // |max a - max b| <= max |a - b|.
            assert!((got_max - want_max).abs() <= max_tol, "max {got_max} vs {want_max}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tables

fn parse_tsv(s: &str) -> (Vec<String>, Vec<Vec<f64>>) {
    let mut lines = s.lines();
    let header = lines.next().unwrap().split('\t').map(String::from).collect();
    let rows = lines.map(|l| l.split('\t').map(|c| c.parse::<f64>().unwrap()).collect()).collect();
    (header, rows)
}

fn assert_row(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: columns");
    for (c, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 0.006, "{what}: column {c}: {g} vs {w}");
    }
}

/// A hand-made 6x5x4 image, 2 mm voxels, MNI-like affine with x flipped:
/// cluster 1 = the line y=1, z=1, x=0..3 (values 2, 5, 3, 4.5) plus (1,2,1) = 2;
/// cluster 2 = the single voxel (4,3,3) = 4 (two voxels from anything else).
fn table_image() -> (MaskGraph, Vec<f32>, Vec<f32>, [[f64; 4]; 3]) {
    let dims = [6, 5, 4];
    let n = 120;
    let lin = |x: usize, y: usize, z: usize| x + 6 * (y + 5 * z);
    let mut stat = vec![0.0f32; n];
    let mut p = vec![0.9f32; n];
    for (x, val) in [(0, 2.0), (1, 5.0), (2, 3.0), (3, 4.5)] {
        stat[lin(x, 1, 1)] = val;
    }
    stat[lin(1, 2, 1)] = 2.0;
    stat[lin(4, 3, 3)] = 4.0;
    p[lin(1, 1, 1)] = 0.01;
    p[lin(3, 1, 1)] = 0.02;
    p[lin(4, 3, 3)] = 0.04;
    let affine = [[-2.0, 0.0, 0.0, 90.0], [0.0, 2.0, 0.0, -126.0], [0.0, 0.0, 2.0, -72.0]];
    (MaskGraph::from_mask(dims, &[true; 120], Connectivity::C26), stat, p, affine)
}

#[test]
fn cluster_table_on_a_known_image() {
    let (g, stat, p, affine) = table_image();
    let table = cluster_table(&g, &stat, 1.5, &p, &affine, 8.0);
    let (header, rows) = parse_tsv(&table);
    assert_eq!(
        header,
        [
            "cluster_index",
            "voxels",
            "volume_mm3",
            "peak_stat",
            "peak_x",
            "peak_y",
            "peak_z",
            "cog_x",
            "cog_y",
            "cog_z",
            "corrected_p"
        ]
    );
    assert_eq!(rows.len(), 2);
    // Cluster 1: weights 2, 5, 3, 4.5, 2 (sum 16.5) at x = 0, 1, 2, 3, 1 and y = 1,1,1,1,2.
    let cog_x = (5.0 + 6.0 + 13.5 + 2.0) / 16.5;
    let cog_y = (2.0 + 5.0 + 3.0 + 4.5 + 4.0) / 16.5;
    assert_row(
        &rows[0],
        &[1.0, 5.0, 40.0, 5.0, 88.0, -124.0, -70.0, 90.0 - 2.0 * cog_x, -126.0 + 2.0 * cog_y, -70.0, 0.01],
        "cluster 1",
    );
    assert_row(&rows[1], &[2.0, 1.0, 8.0, 4.0, 82.0, -120.0, -66.0, 82.0, -120.0, -66.0, 0.04], "cluster 2");
}

#[test]
fn local_maxima_on_a_known_image() {
    let (g, stat, p, affine) = table_image();
    // Maxima of cluster 1: (1,1,1) = 5 and (3,1,1) = 4.5, 4 mm apart; cluster 2: itself.
    let (_, rows) = parse_tsv(&local_maxima_table(&g, &stat, 1.5, &p, &affine, 3, 0.0));
    assert_eq!(rows.len(), 3);
    assert_row(&rows[0], &[1.0, 5.0, 88.0, -124.0, -70.0, 0.01], "max 1");
    assert_row(&rows[1], &[1.0, 4.5, 84.0, -124.0, -70.0, 0.02], "max 2");
    assert_row(&rows[2], &[2.0, 4.0, 82.0, -120.0, -66.0, 0.04], "max 3");
    // 4 mm apart is kept at a 4 mm minimum, dropped at 5 mm; and at most one per cluster.
    assert_eq!(parse_tsv(&local_maxima_table(&g, &stat, 1.5, &p, &affine, 3, 4.0)).1.len(), 3);
    assert_eq!(parse_tsv(&local_maxima_table(&g, &stat, 1.5, &p, &affine, 3, 5.0)).1.len(), 2);
    assert_eq!(parse_tsv(&local_maxima_table(&g, &stat, 1.5, &p, &affine, 1, 0.0)).1.len(), 2);
}

// ---------------------------------------------------------------------------------------
// Timing (run with: cargo test --release --lib spatial::oracle_tests::timing -- --ignored --nocapture)

/// A 2 mm MNI-sized grid (91x109x91) with an ellipsoidal "brain" of about 230,000 voxels
/// and smooth noise, about half of it positive, scaled like a t map.
fn brain_like(rng: &mut Rng) -> (MaskGraph, Vec<f32>, MaskGraph) {
    let dims = [91, 109, 91];
    let mut img = smooth_image(rng, dims, 1.0, 3, 0.0);
    for i in 0..img.n() {
        let (x, y, z) = ((i % 91) as f64, ((i / 91) % 109) as f64, (i / (91 * 109)) as f64);
        let r = ((x - 45.0) / 35.0).powi(2) + ((y - 54.0) / 44.0).powi(2) + ((z - 45.0) / 36.0).powi(2);
        img.mask[i] = r <= 1.0;
        img.values[i] *= 3.0;
    }
    (img.graph(Connectivity::C6), img.map(), img.graph(Connectivity::C26))
}

#[test]
#[ignore]
fn timing() {
    let mut rng = Rng(6);
    let (g6, map, g26) = brain_like(&mut rng);
    let pos = map.iter().filter(|&&x| x > 0.0).count();
    let max = map.iter().copied().fold(f32::MIN, f32::max);
    println!("{} voxels, {} positive, max {max}", g6.len(), pos);
    let p = TfceParams::default();
    let dh = max / 100.0;
    let mut ws = Workspace::new();
    let mut out = vec![0.0f32; g6.len()];
    let reps = 50;
    // The minimum over repetitions: the machine is shared, and the minimum is the least
    // disturbed estimate of the single-threaded cost.
    let time = |name: &str, f: &mut dyn FnMut()| {
        f(); // warm the workspace
        let mut best = f64::INFINITY;
        let mut total = 0.0;
        for _ in 0..reps {
            let t = std::time::Instant::now();
            f();
            let dt = t.elapsed().as_secs_f64() * 1e3;
            best = best.min(dt);
            total += dt;
        }
        println!("{name}: min {best:.2} ms, mean {:.2} ms", total / reps as f64);
    };
    time("tfce_stepwise_reference_into (C6)", &mut || {
        tfce_stepwise_reference_into(&g6, &map, &p, dh, &mut ws, &mut out).unwrap()
    });
    time("tfce_exact_reference_into (C6)", &mut || tfce_exact_reference_into(&g6, &map, &p, &mut ws, &mut out));
    time("tfce_stepwise_into (C6)", &mut || tfce_stepwise_into(&g6, &map, &p, dh, &mut ws, &mut out).unwrap());
    time("tfce_stepwise_max (C6)", &mut || {
        std::hint::black_box(tfce_stepwise_max(&g6, &map, &p, dh, &mut ws).unwrap());
    });
    time("tfce_exact_into (C6)", &mut || tfce_exact_into(&g6, &map, &p, &mut ws, &mut out));
    time("tfce_exact_max (C6)", &mut || {
        std::hint::black_box(tfce_exact_max(&g6, &map, &p, &mut ws));
    });
    let t2 = TfceParams::t2();
    time("tfce_stepwise_max (T2, C26)", &mut || {
        std::hint::black_box(tfce_stepwise_max(&g26, &map, &t2, dh, &mut ws).unwrap());
    });
    time("cluster_sizes_masses (C26, thr 2.3)", &mut || {
        std::hint::black_box(cluster_sizes_masses(&g26, &map, 2.3, &mut ws));
    });
    time("cluster_sizes_masses (C26, thr 0)", &mut || {
        std::hint::black_box(cluster_sizes_masses(&g26, &map, 0.0, &mut ws));
    });
    time("label_components (C26, thr 2.3)", &mut || {
        std::hint::black_box(label_components(&g26, &map, 2.3, &mut ws));
    });
}

/// The fast engine against the reference, interleaved so both see the same machine load
/// (run with: cargo test --release --lib spatial::oracle_tests::timing_fast_vs_reference -- --ignored --nocapture).
#[test]
#[ignore]
fn timing_fast_vs_reference() {
    let mut rng = Rng(6);
    let (g6, map, _) = brain_like(&mut rng);
    let p = TfceParams::default();
    let dh = map.iter().copied().fold(f32::MIN, f32::max) / 100.0;
    let mut ws = Workspace::new();
    let mut out = vec![0.0f32; g6.len()];
    let ms = |f: &mut dyn FnMut()| {
        let t = std::time::Instant::now();
        f();
        t.elapsed().as_secs_f64() * 1e3
    };
    for exact in [false, true] {
        let (mut best_ref, mut best_fast, mut ratios) = (f64::INFINITY, f64::INFINITY, Vec::new());
        for _ in 0..40 {
            let r = ms(&mut || {
                if exact {
                    tfce_exact_reference_into(&g6, &map, &p, &mut ws, &mut out)
                } else {
                    tfce_stepwise_reference_into(&g6, &map, &p, dh, &mut ws, &mut out).unwrap()
                }
            });
            let f = ms(&mut || {
                if exact {
                    tfce_exact_into(&g6, &map, &p, &mut ws, &mut out)
                } else {
                    tfce_stepwise_into(&g6, &map, &p, dh, &mut ws, &mut out).unwrap()
                }
            });
            best_ref = best_ref.min(r);
            best_fast = best_fast.min(f);
            ratios.push(r / f);
        }
        ratios.sort_by(f64::total_cmp);
        let what = if exact { "exact" } else { "stepwise" };
        println!(
            "{what}: reference min {best_ref:.2} ms, fast min {best_fast:.2} ms, median ratio {:.2}",
            ratios[ratios.len() / 2]
        );
    }
}

#[test]
fn cluster_threshold_is_inclusive() {
    // randomise binarises with `>= thr`; a voxel exactly at the threshold is in.
    let img = Image { dims: [3, 1, 1], mask: vec![true; 3], values: vec![2.0, 1.0, 2.0] };
    let g = img.graph(Connectivity::C6);
    let mut ws = Workspace::new();
    assert_eq!(label_components(&g, &img.map(), 2.0, &mut ws), (vec![1, 0, 2], 2));
    assert_eq!(cluster_sizes_masses(&g, &img.map(), 1.0, &mut ws), (3, 5.0));
}
