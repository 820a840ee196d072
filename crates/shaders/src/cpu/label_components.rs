//! CPU port of `shader/label_components.wgsl`: the same buffers (neighbour table, maps, parent,
//! per-voxel accumulators, per-map results) and the same rules, run sequentially.
//!
//! The shader's union-find only ever hooks a root under a smaller index, so every voxel's
//! final parent is the smallest voxel index of its component whatever order the unions run
//! in; this sequential version obeys the same invariant and gives the same labels exactly.
//! Masses use the same 64-bit fixed point and the same conversion back to f32.

pub use crate::spatial::{EXCLUDED_ROW, MODE_INCLUSIVE, MODE_TFCE, NONE};

/// Whether a voxel enters a component: `x >= thr` (NaN never) for clusters, as
/// [`voxflip_stats::spatial::above_cluster_threshold`]; `x > thr` and finite for a TFCE level.
#[inline]
pub fn active(x: f32, thr: f32, mode: u32) -> bool {
    if mode == MODE_TFCE {
        x.is_finite() && x > thr
    } else {
        !x.is_nan() && x >= thr
    }
}

fn find(parent: &[u32], base: usize, mut x: u32) -> u32 {
    loop {
        let q = parent[base + x as usize];
        if q == x {
            return x;
        }
        x = q;
    }
}

/// Labels every map of the batch (`maps.len() / v` maps of `v` voxels): returns per voxel
/// the map-local index of its component's root (the component's smallest voxel index), or
/// [`NONE`]. `nbrs` holds `width` entries per voxel, neighbours ascending then padding `v`.
pub fn label_components(nbrs: &[u32], width: usize, maps: &[f32], v: usize, thr: f32, mode: u32) -> Vec<u32> {
    assert!(v > 0 && maps.len().is_multiple_of(v) && nbrs.len() == v * width);
    // init
    // A TFCE level never holds a voxel whose row is marked EXCLUDED_ROW (tfce.wgsl's `enter`).
    let enters =
        |i: usize, x: f32| active(x, thr, mode) && !(mode == MODE_TFCE && nbrs[(i % v) * width] == EXCLUDED_ROW);
    let mut parent: Vec<u32> =
        maps.iter().enumerate().map(|(i, &x)| if enters(i, x) { (i % v) as u32 } else { NONE }).collect();
    // hook: each edge from its larger end; the root with the larger index goes under the other.
    for base in (0..maps.len()).step_by(v) {
        for vv in 0..v {
            if parent[base + vv] == NONE {
                continue;
            }
            for &u in &nbrs[vv * width..(vv + 1) * width] {
                if u as usize >= vv {
                    break;
                }
                if parent[base + u as usize] == NONE {
                    continue;
                }
                let a = find(&parent, base, vv as u32);
                let b = find(&parent, base, u);
                if a != b {
                    parent[base + a.max(b) as usize] = a.min(b);
                }
            }
        }
        // compress
        for vv in 0..v {
            if parent[base + vv] != NONE {
                parent[base + vv] = find(&parent, base, vv as u32);
            }
        }
    }
    parent
}

/// The fixed point of the masses: each voxel contributes `round(x * scale)` (ties to even)
/// as a 64-bit integer, and a root's sum (hi, lo) reads back as
/// `f32(hi as i32) * hi_scale + f32(lo) * lo_scale`.
///
/// `scale = 2^k` with k chosen from the largest |x| over the voxels that enter (`maxabs <=
/// 2^e`, `k = 30 - e` clamped to [-90, 24]), so one voxel's integer fits 31 bits and any sum
/// of up to 2^32 of them fits 63: no overflow. Error bound: each voxel rounds by at most
/// 2^-(k+1) <= maxabs * 2^-30, so a cluster of n voxels errs by at most n * maxabs * 2^-30,
/// plus three f32 roundings in the conversion (<= 2^-22 relative). Against the f64 sum of
/// the CPU reference this is <= (maxabs / thr) * 2^-30 + 2^-22 relative. The result does not
/// depend on the order of the additions. ±inf contributions clamp to ±(2^31 - 128) / scale
/// (the CPU would give an infinite mass).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MassScale {
    pub scale: f32,
    pub lo_scale: f32,
    pub hi_scale: f32,
}

impl MassScale {
    /// The scale for the voxels of one map that enter at `thr` (inclusive rule).
    /// One per map, so that a map's masses do not depend on the other maps of its batch.
    pub fn for_map(map: &[f32], thr: f32) -> Self {
        let maxabs =
            map.iter().filter(|&&x| x.is_finite() && active(x, thr, MODE_INCLUSIVE)).fold(0f32, |m, &x| m.max(x.abs()));
        Self::for_maxabs(maxabs)
    }

    /// The scale for a map whose active voxels' largest |value| is `maxabs` (0: none).
    pub fn for_maxabs(maxabs: f32) -> Self {
        let k = if maxabs > 0.0 {
            let mut e = (maxabs as f64).log2().ceil() as i32;
            while 2f64.powi(e) < maxabs as f64 {
                e += 1;
            }
            while 2f64.powi(e - 1) >= maxabs as f64 {
                e -= 1;
            }
            (30 - e).clamp(-90, 24)
        } else {
            24
        };
        Self { scale: 2f32.powi(k), lo_scale: 2f32.powi(-k), hi_scale: 2f32.powi(32 - k) }
    }

    /// One voxel's fixed-point value, as the shader's `i32(round(clamp(x * scale, ...)))`.
    #[inline]
    pub fn fixed(&self, x: f32) -> i32 {
        (x * self.scale).clamp(-2147483520.0, 2147483520.0).round_ties_even() as i32
    }

    /// A root's sum back in f32, as the shader's `mass_of`.
    #[inline]
    pub fn mass_of(&self, lo: u32, hi: u32) -> f32 {
        (hi as i32) as f32 * self.hi_scale + lo as f32 * self.lo_scale
    }
}

/// Twin of the `measure` pass: per voxel `[size, mass lo, mass hi]`, non-zero at roots only.
/// `mass`: each map's scale.
pub fn measure(parent: &[u32], maps: &[f32], v: usize, mass: Option<&[MassScale]>) -> Vec<[u32; 3]> {
    let mut acc = vec![[0u32; 3]; maps.len()];
    for (i, &r) in parent.iter().enumerate() {
        if r == NONE {
            continue;
        }
        let root = (i / v) * v + r as usize;
        acc[root][0] += 1;
        if let Some(m) = mass {
            let q = m[i / v].fixed(maps[i]);
            let lo = q as u32;
            let hi = if q < 0 { u32::MAX } else { 0 };
            let (new, carry) = acc[root][1].overflowing_add(lo);
            acc[root][1] = new;
            acc[root][2] = acc[root][2].wrapping_add(hi).wrapping_add(carry as u32);
        }
    }
    acc
}

/// Twin of the `cluster_max` pass: per map the largest extent and the largest mass (−inf
/// when the map has no component, or without `mass`).
pub fn cluster_max(parent: &[u32], acc: &[[u32; 3]], v: usize, mass: Option<&[MassScale]>) -> Vec<(u32, f32)> {
    let nmaps = parent.len() / v;
    let mut out = vec![(0u32, f32::NEG_INFINITY); nmaps];
    for (i, &r) in parent.iter().enumerate() {
        if r as usize != i % v {
            continue;
        }
        let o = &mut out[i / v];
        o.0 = o.0.max(acc[i][0]);
        if let Some(m) = mass {
            o.1 = o.1.max(m[i / v].mass_of(acc[i][1], acc[i][2]));
        }
    }
    out
}
