//! CPU port of `shader/tfce_exact.wgsl`: the exact TFCE of every map of a batch from its
//! component tree, with the shader's f32 operations in the shader's order (see the shader's
//! header for the formulation), and the size table the host uploads for it.
//!
//! The port sorts with the standard library's stable sort where the shader runs a stable
//! radix sort: the same order (decreasing value, ties in increasing voxel index), reached
//! independently.
use crate::spatial::{TfceExactParams, NONE};
use voxflip_stats::spatial::pow_fast;

/// s^E / (H + 1) for s = 0..=v, each as two f32 (hi, lo) with hi + lo the f64 value to
/// about 2^-48 relative: the shader's size differences s'^E - s^E keep their relative
/// precision even for s' = s + 1 in a large component.
pub fn size_pow_table(v: usize, e_exp: f32, h_exp: f32) -> Vec<[f32; 2]> {
    let scale = 1.0 / (h_exp as f64 + 1.0);
    (0..=v)
        .map(|s| {
            let x = pow_fast(s as f64, e_exp as f64) * scale;
            let hi = x as f32;
            [hi, (x - hi as f64) as f32]
        })
        .collect()
}

/// h^(H+1) as the shader forms it.
pub fn height_weight(h: f32, p: &TfceExactParams) -> f32 {
    if p.int_power == 0 {
        return h.powf(p.h_plus_1);
    }
    let mut r = h;
    for _ in 1..p.int_power {
        r *= h;
    }
    r
}

fn size_gain(sizepow: &[[f32; 2]], s_new: u32, s_old: u32) -> f32 {
    let (a, b) = (sizepow[s_new as usize], sizepow[s_old as usize]);
    (a[0] - b[0]) + (a[1] - b[1])
}

/// Neumaier's compensated sum: (sum, compensation) + x.
fn add_compensated(acc: (f32, f32), x: f32) -> (f32, f32) {
    let t = acc.0 + x;
    let c = if acc.0.abs() >= x.abs() { acc.1 + ((acc.0 - t) + x) } else { acc.1 + ((x - t) + acc.0) };
    (t, c)
}

fn find(uf: &mut [u32], x0: u32) -> u32 {
    let mut x = x0;
    loop {
        let q = uf[x as usize];
        if q == x {
            return x;
        }
        let g = uf[q as usize];
        uf[x as usize] = g;
        x = g;
    }
}

/// Exact TFCE of every map of `maps` (map-major, `v` voxels each) over the neighbour table
/// `nbrs` (`width` entries per voxel, padded with `v`), with `p` (only `int_power` and
/// `h_plus_1` are read) and the table of [`size_pow_table`]: sort_map, grow_tree and
/// push_down of the shader, one map after another.
pub fn tfce_exact(
    nbrs: &[u32],
    width: usize,
    maps: &[f32],
    v: usize,
    p: &TfceExactParams,
    sizepow: &[[f32; 2]],
) -> Vec<f32> {
    let mut out = vec![0f32; maps.len()];
    for (map, tf) in maps.chunks(v).zip(out.chunks_mut(v)) {
        // sort_map: positive finite voxels, decreasing value, ties by voxel index.
        let mut order: Vec<u32> = (0..v as u32)
            .filter(|&x| {
                let (val, row) = (map[x as usize], nbrs[x as usize * width]);
                val.is_finite() && val > 0.0 && row != crate::spatial::EXCLUDED_ROW
            })
            .collect();
        order.sort_by_key(|&x| 0x7f7f_ffffu32 - map[x as usize].to_bits());
        let n = order.len();

        // grow_tree.
        let mut uf = vec![NONE; v];
        let mut size = vec![0u32; v];
        let mut current = vec![0u32; v];
        // Per node: (parent node, edge weight, own term).
        let mut node = vec![(NONE, 0f32, 0f32); n];
        for (i, &x) in order.iter().enumerate() {
            let w = height_weight(map[x as usize], p);
            uf[x as usize] = x;
            let mut root = x;
            let mut s = 1u32;
            let mut children: Vec<(u32, u32)> = Vec::new();
            for &u in &nbrs[x as usize * width..(x as usize + 1) * width] {
                if u as usize >= v {
                    break;
                }
                if uf[u as usize] == NONE {
                    continue;
                }
                let ru = find(&mut uf, u);
                if ru == root {
                    continue;
                }
                let su = size[ru as usize];
                children.push((current[ru as usize], su));
                if su >= s {
                    uf[root as usize] = ru;
                    root = ru;
                } else {
                    uf[ru as usize] = root;
                }
                s += su;
            }
            size[root as usize] = s;
            current[root as usize] = i as u32;
            node[i] = (NONE, 0.0, w * sizepow[s as usize][0]);
            for (c, sc) in children {
                let edge = w * size_gain(sizepow, s, sc);
                node[c as usize].0 = i as u32;
                node[c as usize].1 = edge;
            }
        }

        // push_down: each node's path sum from its parent's, lowest node first.
        let mut path = vec![(0f32, 0f32); n];
        for i in (0..n).rev() {
            let (parent, edge, own) = node[i];
            let up = if parent == NONE { (0.0, 0.0) } else { path[parent as usize] };
            let acc = add_compensated(up, edge);
            path[i] = acc;
            let t = add_compensated(acc, own);
            tf[order[i] as usize] = t.0 + t.1;
        }
    }
    out
}

/// The bound of the exact TFCE's error relative to the exact integral (the shader and this
/// port alike, for H >= 0, E >= 0 and maps of `v` voxels whose largest value is `max`), in
/// units of the value: with u = 2^-24,
/// - the height weight: (H + 1 - 1) u by repeated multiplication (integer H + 1), or the
///   device's pow, which WGSL inherits from exp2(y log2 x): (3 + 2 |y log2 max|) u for exp2
///   plus |y| 2^-21 for log2, taken as (8 + 2 |y log2 max| + 8 |y|) u, y = H + 1;
/// - a size difference from the two-float table: u, plus 2^-45 v / min(E, 1) for the table's
///   own error amplified by s'^E / (s'^E - s^E) <= s' / E (for E < 1; nothing for E = 0,
///   where the differences are exactly 0);
/// - the products w * size: u, and the table's hi alone for a voxel's own term: u;
/// - Neumaier's sum of the n <= v positive terms: 2u + n u^2, and its final rounding: u.
pub fn relative_bound(p: &TfceExactParams, e_exp: f32, v: usize, max: f32) -> f32 {
    let u = 2f64.powi(-24);
    let weight = if p.int_power > 0 {
        (p.int_power as f64 - 1.0) * u
    } else {
        let y = p.h_plus_1.abs() as f64;
        (8.0 + 2.0 * y * (max.max(f32::MIN_POSITIVE) as f64).log2().abs() + 8.0 * y) * u
    };
    let table = if e_exp > 0.0 { u + 2f64.powi(-45) * v as f64 / (e_exp as f64).min(1.0) } else { u };
    (weight + table + 2.0 * u + 3.0 * u + v as f64 * u * u) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spatial::neighbour_table;
    use voxflip_stats::spatial::{Connectivity, MaskGraph, TfceParams, Workspace};

    /// A small deterministic generator (the crate has no rand): uniform in [0, 1).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f32 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    /// The port against voxflip_stats' exact TFCE (f64 offsets, component tree of the same
    /// maps) within [`relative_bound`], plus 2^-40 of the map's largest TFCE for the
    /// reference's own cancellation residue; returns the worst relative difference.
    fn check(g: &MaskGraph, maps: &[f32], tp: &TfceParams, what: &str) -> f64 {
        let (nbrs, width) = neighbour_table(g);
        let v = g.len();
        let p = TfceExactParams::new(v, width, maps.len() / v, tp.h);
        let sp = size_pow_table(v, tp.e, tp.h);
        let port = tfce_exact(&nbrs, width, maps, v, &p, &sp);
        let mut ws = Workspace::new();
        let mut worst = 0f64;
        for (j, (m, t)) in maps.chunks(v).zip(port.chunks(v)).enumerate() {
            let r = voxflip_stats::spatial::tfce_exact(g, m, tp, &mut ws);
            let rmax = r.iter().copied().fold(0f32, f32::max);
            let max = m.iter().copied().filter(|x| x.is_finite() && *x > 0.0).fold(0f32, f32::max);
            let bound = relative_bound(&p, tp.e, v, max);
            for i in 0..v {
                let (a, b) = (t[i], r[i]);
                if !(m[i].is_finite() && m[i] > 0.0) {
                    assert_eq!(a, 0.0, "{what} map {j} voxel {i}: not enhanced");
                    continue;
                }
                assert!(
                    (a - b).abs() <= bound * b + 2f32.powi(-40) * rmax,
                    "{what} map {j} voxel {i}: port {a} vs reference {b} (bound {bound:e})"
                );
                worst = worst.max(((a - b).abs() / b) as f64);
            }
        }
        worst
    }

    fn smooth(rng: &mut Lcg, g: &MaskGraph, nmaps: usize, scale: f32) -> Vec<f32> {
        let n: usize = g.dims.iter().product();
        let mut out = Vec::new();
        for _ in 0..nmaps {
            let mut a: Vec<f32> = (0..n).map(|_| rng.next() - 0.5).collect();
            for _ in 0..3 {
                let b = a.clone();
                for i in 1..n - 1 {
                    a[i] = (b[i - 1] + b[i] + b[i + 1]) / 3.0;
                }
            }
            out.extend(g.voxels.iter().map(|&lin| a[lin as usize] * scale + 0.2));
        }
        out
    }

    const PARAMS: [(f32, f32); 5] = [(2.0, 0.5), (2.0, 1.0), (1.5, 0.7), (3.0, 0.0), (0.5, 2.0)];

    #[test]
    fn port_equals_reference_on_random_maps() {
        let mut rng = Lcg(7);
        let dims = [9, 8, 7];
        for conn in [Connectivity::C6, Connectivity::C18, Connectivity::C26] {
            let mask: Vec<bool> = (0..dims.iter().product()).map(|_| rng.next() < 0.85).collect();
            let g = MaskGraph::from_mask(dims, &mask, conn);
            for (h, e) in PARAMS {
                let tp = TfceParams { h, e, conn };
                let maps = smooth(&mut rng, &g, 3, 8.0);
                let w = check(&g, &maps, &tp, &format!("{conn:?} H={h} E={e}"));
                assert!(w > 0.0 || e == 0.0, "some rounding is expected: the comparison is not vacuous");
                // White noise: many tiny components merging at every level.
                let noise: Vec<f32> = (0..2 * g.len()).map(|_| rng.next() * 4.0 - 1.0).collect();
                check(&g, &noise, &tp, &format!("{conn:?} H={h} E={e} noise"));
            }
        }
    }

    #[test]
    fn port_equals_reference_on_adversarial_maps() {
        let dims = [6, 5, 4];
        let full = vec![true; 120];
        for conn in [Connectivity::C6, Connectivity::C26] {
            let g = MaskGraph::from_mask(dims, &full, conn);
            let v = g.len();
            let tp = TfceParams { h: 2.0, e: 0.5, conn };
            let cases: Vec<(&str, Vec<f32>)> = vec![
                ("plateau", vec![1.5; v]),
                ("two plateaus", (0..v).map(|i| if i % 7 < 3 { 2.0 } else { 1.0 }).collect()),
                ("single voxel", (0..v).map(|i| if i == 37 { 3.0 } else { -1.0 }).collect()),
                ("all negative", (0..v).map(|i| -(i as f32) - 1.0).collect()),
                ("specials", (0..v).map(|i| [f32::NAN, f32::INFINITY, 0.0, 1.0, f32::NEG_INFINITY][i % 5]).collect()),
                ("ramp", (0..v).map(|i| i as f32 * 0.01 + 0.001).collect()),
                ("faces", (0..v).map(|i| if g.coords(i).contains(&0) { 2.5 } else { 0.5 }).collect()),
            ];
            for (name, m) in &cases {
                check(&g, m, &tp, &format!("{name} {conn:?}"));
            }
            let (nbrs, width) = neighbour_table(&g);
            let p = TfceExactParams::new(v, width, 1, 2.0);
            let all_negative = tfce_exact(&nbrs, width, &cases[3].1, v, &p, &size_pow_table(v, 0.5, 2.0));
            assert!(all_negative.iter().all(|&x| x == 0.0));
        }
        // One voxel (V = 1) and a plateau's closed form: v voxels at height t, one component
        // of size V from t down: TFCE = V^E t^(H+1) / (H+1).
        let g1 = MaskGraph::from_mask([1, 1, 1], &[true], Connectivity::C6);
        check(&g1, &[3.0, -1.0, 0.25], &TfceParams::default(), "one voxel");
        let g = MaskGraph::from_mask(dims, &full, Connectivity::C6);
        let v = g.len();
        let (nbrs, width) = neighbour_table(&g);
        let p = TfceExactParams::new(v, width, 1, 2.0);
        let t = tfce_exact(&nbrs, width, &vec![1.5; v], v, &p, &size_pow_table(v, 0.5, 2.0));
        let closed = (v as f64).sqrt() * 1.5f64.powi(3) / 3.0;
        assert!(t.iter().all(|&x| ((x as f64 - closed) / closed).abs() < 4e-7), "{} vs {closed}", t[0]);
    }
}
