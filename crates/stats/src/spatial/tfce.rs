//! Threshold-free cluster enhancement (Smith & Nichols 2009).
//!
//! TFCE(v) = ∫_0^{T_v} e(h)^E h^H dh, e(h) the voxel count of v's component of {T > h}.
//! Two versions share one engine:
//!
//! - **stepwise**, randomise's discretization: levels h_0 = 0, h_k = h_{k-1} + dh;
//!   TFCE(v) = Σ_{k : h_k < T_v} e_k(v)^E h_k^H, not multiplied by dh, where e_k(v) counts
//!   v's component of {T > h_k}. This is what FSL's `tfce()` in newimagefns.h (called by
//!   randomise with minT = 0 and the observed max / 100 as dh) computes:
//!   * strict `>`: it keeps voxels with `value > curThr`;
//!   * thresholds accumulate in f32 (`curThr += deltaT`), which we reproduce so that the
//!     voxels sitting on a level (e.g. the observed maximum, at level 100) fall on the
//!     same side as in randomise;
//!   * level 0 (h = 0) contributes 0^H, i.e. nothing for H > 0.
//!
//!   * FSL visits only x = 1..nx-2 (likewise y, z): the outermost layer of the grid gets
//!     TFCE 0 and joins no component. That is the graph's business
//!     ([`MaskGraph::without_grid_border`]): voxels it excludes are never enhanced, here
//!     and in the exact version alike.
//!
//!   A step too small for a map's maximum (more than [`MAX_TFCE_LEVELS`] levels) is an
//!   error ([`TooManyLevels`]), for the caller to report: `--tfce_D` is a user's input.
//! - **exact**: the integral itself, piecewise in closed form.
//!
//! The engine: voxels are added in decreasing height; union-find joins each to its already
//! added neighbours, so the components present after adding all voxels down to height h are
//! exactly the components of the map thresholded at h. Between two changes of a component
//! its size s is constant, so its contribution over that height range is
//! s^E × (W(top) − W(bottom)), W a cumulative height weight: W(h) = h^{H+1} (exact, divided
//! by H+1 at the end) or Q_k = Σ_{j<k} h_j^H (stepwise). A root remembers the weight `top`
//! down to which its contribution has been added and settles the rest only when it changes
//! (a voxel joins, or it merges) or at the end. The contribution is added to the root's
//! offset; a voxel's value is the sum of the offsets on its path to the root, and on a
//! merge the absorbed root subtracts the new root's offset (weighted union-find), so each
//! voxel keeps exactly what was added while it belonged. O(V α(V)) after the ordering:
//! counting sort by level (stepwise) or radix sort by value (exact).
//!
//! Offsets are f64: a merge subtracts a possibly much larger root offset, and f64 keeps
//! that cancellation ~1e-16 × (offset / value), far below the f32 output's resolution.
//!
//! Only positive, finite values are enhanced; zero, negative, NaN and ±inf give 0 (the
//! pipeline runs a contrast's other direction as its own contrast).

use super::graph::{Connectivity, MaskGraph};
use super::levels::{tfce_levels, TooManyLevels, MAX_TFCE_LEVELS};
use super::workspace::{pow_fast, TfNode, Workspace, UNSEEN};

/// TFCE exponents and connectivity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TfceParams {
    /// Height exponent H.
    pub h: f32,
    /// Extent exponent E.
    pub e: f32,
    pub conn: Connectivity,
}

impl Default for TfceParams {
    /// randomise's defaults: H = 2, E = 0.5, 6-connectivity.
    fn default() -> Self {
        Self { h: 2.0, e: 0.5, conn: Connectivity::C6 }
    }
}

impl TfceParams {
    /// randomise `--T2` (for 2-D / surface-like data): H = 2, E = 1, 26-connectivity.
    pub fn t2() -> Self {
        Self { h: 2.0, e: 1.0, conn: Connectivity::C26 }
    }
}

/// Whether a voxel takes part in TFCE at all.
#[inline]
pub(crate) fn enhanced(x: f32) -> bool {
    x > 0.0 && x.is_finite()
}

/// Whether voxel `v` of `map` takes part in TFCE over `g`: enhanced and not left out by the
/// graph (the grid's border, [`MaskGraph::without_grid_border`]).
#[inline]
pub(crate) fn enhanced_in(g: &MaskGraph, map: &[f32], v: usize) -> bool {
    enhanced(map[v]) && !g.is_excluded(v)
}

/// randomise's TFCE step for a contrast: the maximum of the observed map / 100, used for
/// every permutation of that contrast. 0 when the map has no positive finite value (then
/// there is nothing to enhance, and the TFCE functions return zeros for any map).
pub fn tfce_step_from_observed(observed: &[f32]) -> f32 {
    let max = observed.iter().copied().filter(|&x| enhanced(x)).fold(0.0f32, f32::max);
    max / 100.0
}

/// Stepwise TFCE (randomise's discretization) of `map` with level step `dh`.
///
/// `dh` is fixed by the caller for all permutations (randomise: max of the observed map /
/// 100). `g` must have been built with `p.conn`. Returns all zeros when `dh` is not a
/// positive finite number (no level can be formed, e.g. an observed map with no positive
/// voxel). An error when the map needs more than [`MAX_TFCE_LEVELS`] levels.
pub fn tfce_stepwise(
    g: &MaskGraph,
    map: &[f32],
    p: &TfceParams,
    dh: f32,
    ws: &mut Workspace,
) -> Result<Vec<f32>, TooManyLevels> {
    let mut out = vec![0.0f32; g.len()];
    tfce_stepwise_into(g, map, p, dh, ws, &mut out)?;
    Ok(out)
}

/// [`tfce_stepwise`] written into `out` (length V), allocating nothing once `ws` is warm.
pub fn tfce_stepwise_into(
    g: &MaskGraph,
    map: &[f32],
    p: &TfceParams,
    dh: f32,
    ws: &mut Workspace,
    out: &mut [f32],
) -> Result<(), TooManyLevels> {
    if prepare_stepwise(g, map, p, dh, ws)? {
        settle_values(ws, 1.0, out);
        if p.h > 0.0 {
            // Voxels at level 0 only (0 < T <= dh) sum 0^H = 0 exactly; the offsets would
            // leave f64 residue of a cancellation there. They sit at the end of the order.
            for &v in &ws.order[ws.level0_start..] {
                out[v as usize] = 0.0;
            }
        }
    } else {
        out.fill(0.0);
    }
    Ok(())
}

/// The maximum of [`tfce_stepwise`] over the map (0 when nothing is enhanced), for the
/// FWE null. Cheaper than the full map: only voxels that started a component can hold the
/// maximum (such a voxel shares every lower level with the voxels that joined it later and
/// has extra levels of its own), so only their values are summed.
pub fn tfce_stepwise_max(
    g: &MaskGraph,
    map: &[f32],
    p: &TfceParams,
    dh: f32,
    ws: &mut Workspace,
) -> Result<f32, TooManyLevels> {
    Ok(if prepare_stepwise(g, map, p, dh, ws)? { settle_max(ws, 1.0) } else { 0.0 })
}

/// Exact TFCE: ∫_0^{T_v} e(h)^E h^H dh, with e(h) the size of v's component of {T >= h}
/// (> or >= differ only on a set of heights of measure zero). `g` must have been built
/// with `p.conn`.
pub fn tfce_exact(g: &MaskGraph, map: &[f32], p: &TfceParams, ws: &mut Workspace) -> Vec<f32> {
    let mut out = vec![0.0f32; g.len()];
    tfce_exact_into(g, map, p, ws, &mut out);
    out
}

/// [`tfce_exact`] written into `out` (length V).
pub fn tfce_exact_into(g: &MaskGraph, map: &[f32], p: &TfceParams, ws: &mut Workspace, out: &mut [f32]) {
    prepare_exact(g, map, p, ws);
    settle_values(ws, 1.0 / (p.h as f64 + 1.0), out);
}

/// The maximum of [`tfce_exact`] (see [`tfce_stepwise_max`] for why it is cheaper).
pub fn tfce_exact_max(g: &MaskGraph, map: &[f32], p: &TfceParams, ws: &mut Workspace) -> f32 {
    prepare_exact(g, map, p, ws);
    settle_max(ws, 1.0 / (p.h as f64 + 1.0))
}

// ---------------------------------------------------------------------------------------
// Ordering

/// Builds the level table and orders the voxels by level, then runs the engine.
/// Returns false when nothing can be enhanced.
fn prepare_stepwise(
    g: &MaskGraph,
    map: &[f32],
    p: &TfceParams,
    dh: f32,
    ws: &mut Workspace,
) -> Result<bool, TooManyLevels> {
    assert_eq!(map.len(), g.len(), "map length must equal the number of in-mask voxels");
    assert_eq!(g.connectivity(), p.conn, "TFCE connectivity differs from the mask graph's");
    let n = g.len();
    ws.reset_tfce(n);
    if !(dh > 0.0 && dh.is_finite()) {
        return Ok(false);
    }
    let max = (0..n).filter(|&v| enhanced_in(g, map, v)).map(|v| map[v]).fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return Ok(false);
    }

    // The levels h_k < max, exactly as FSL forms them (see `levels`).
    tfce_levels(max, dh, MAX_TFCE_LEVELS, &mut ws.level_h)?;
    let hs = &ws.level_h;
    let top_level = hs.len() - 1; // highest k with h_k < max
                                  // level_q[k] = Σ_{j<k} h_j^H, so levels a..=b weigh level_q[b+1] - level_q[a].
    let hpow = p.h as f64;
    let q = &mut ws.level_q;
    q.clear();
    q.push(0.0);
    let mut acc = 0.0f64;
    for &h in &hs[..=top_level] {
        acc += (h as f64).powf(hpow);
        q.push(acc);
    }

    // Level of each voxel: the highest k with h_k < T_v. The float estimate T/dh is off by
    // at most a step or two (rounding, accumulated thresholds); the table decides. Voxels
    // not enhanced get the marker `NOT_ENHANCED` so the scatter pass needs no second test
    // of the map.
    let inv_dh = 1.0 / dh as f64;
    let hist = &mut ws.hist;
    hist.clear();
    hist.resize(top_level + 2, 0);
    let level = &mut ws.level[..n];
    for (v, (lv, &t)) in level.iter_mut().zip(map).enumerate() {
        if !enhanced(t) || g.is_excluded(v) {
            *lv = NOT_ENHANCED;
            continue;
        }
        let mut k = ((t as f64 * inv_dh) as usize).min(top_level);
        while k < top_level && hs[k + 1] < t {
            k += 1;
        }
        while hs[k] >= t {
            k -= 1; // h_0 = 0 < t, so this stops
        }
        *lv = k as u32;
        hist[k] += 1;
    }
    // Counting sort, highest level first: bucket start of level k = count above k. The
    // same order as the reference (stable: voxel order within a level).
    let mut start = 0u32;
    for k in (0..=top_level).rev() {
        let c = hist[k];
        hist[k] = start;
        start += c;
    }
    let n_active = start as usize;
    ws.order.resize(n_active, 0);
    for (v, &k) in level.iter().enumerate() {
        if k != NOT_ENHANCED {
            let slot = &mut hist[k as usize];
            ws.order[*slot as usize] = v as u32;
            *slot += 1;
        }
    }
    // Now hist[k] is the end of level k's bucket; each bucket gets its weight, written in
    // order so the engine reads weights sequentially instead of looking up levels.
    ws.order_w.resize(n_active, 0.0);
    let mut begin = 0usize;
    for k in (0..=top_level).rev() {
        let end = hist[k] as usize;
        ws.order_w[begin..end].fill(ws.level_q[k + 1]);
        begin = end;
    }
    ws.level0_start = if top_level == 0 { 0 } else { hist[1] as usize };

    ws.prepare_size_pow(n, p.e);
    grow_components(g, ws);
    Ok(true)
}

/// Marks a voxel that TFCE does not enhance in `Workspace::level`.
const NOT_ENHANCED: u32 = u32::MAX;

/// Orders the positive voxels by decreasing value and runs the engine with W(h) = h^{H+1}.
fn prepare_exact(g: &MaskGraph, map: &[f32], p: &TfceParams, ws: &mut Workspace) {
    assert_eq!(map.len(), g.len(), "map length must equal the number of in-mask voxels");
    assert_eq!(g.connectivity(), p.conn, "TFCE connectivity differs from the mask graph's");
    let n = g.len();
    ws.reset_tfce(n);
    // Positive finite f32 values order like their bit patterns, so the keys sort by value.
    ws.keys.clear();
    ws.keys.extend(
        map.iter()
            .enumerate()
            .filter(|&(v, &x)| enhanced(x) && !g.is_excluded(v))
            .map(|(v, &x)| ((x.to_bits() as u64) << 32) | v as u64),
    );
    radix_sort_high32(&mut ws.keys, &mut ws.keys_tmp, &mut ws.hist);
    let hp1 = p.h as f64 + 1.0;
    // The value travels in the key, so the weights need no lookup of the map.
    ws.order.extend(ws.keys.iter().rev().map(|&k| k as u32));
    ws.order_w.extend(ws.keys.iter().rev().map(|&k| pow_fast(f32::from_bits((k >> 32) as u32) as f64, hp1)));
    ws.prepare_size_pow(n, p.e);
    grow_components(g, ws);
}

/// LSD radix sort of `keys` by their upper 32 bits (three passes of 11 bits); stable, so
/// equal values stay in voxel order.
fn radix_sort_high32(keys: &mut Vec<u64>, tmp: &mut Vec<u64>, hist: &mut Vec<u32>) {
    const BITS: u32 = 11;
    const BUCKETS: usize = 1 << BITS;
    tmp.clear();
    tmp.resize(keys.len(), 0);
    // All three histograms in one read of the keys.
    hist.clear();
    hist.resize(3 * BUCKETS, 0);
    for &k in keys.iter() {
        for pass in 0..3 {
            hist[pass * BUCKETS + (((k >> (32 + pass as u32 * BITS)) as usize) & (BUCKETS - 1))] += 1;
        }
    }
    for pass in 0..3 {
        let shift = 32 + pass as u32 * BITS;
        let h = &mut hist[pass * BUCKETS..(pass + 1) * BUCKETS];
        // A pass where every key falls in one bucket would copy the keys unchanged.
        if h.iter().any(|&c| c as usize == keys.len()) {
            continue;
        }
        let mut sum = 0u32;
        for c in h.iter_mut() {
            let count = *c;
            *c = sum;
            sum += count;
        }
        for &k in keys.iter() {
            let b = ((k >> shift) as usize) & (BUCKETS - 1);
            tmp[h[b] as usize] = k;
            h[b] += 1;
        }
        std::mem::swap(keys, tmp);
    }
}

// ---------------------------------------------------------------------------------------
// Engine

/// Adds the voxels of `ws.order` (weights `ws.order_w`, non-increasing) one by one,
/// merging components and settling their contributions lazily (see the module notes).
///
/// The same floating-point operations in the same order as the reference engine
/// ([`super::tfce_reference`]), so the same bits; only the memory layout differs: parents
/// in their own compact array (the `find` walks and the "already added?" tests touch only
/// it), weights read in order instead of looked up per voxel, and the final settling
/// visits roots only.
fn grow_components(g: &MaskGraph, ws: &mut Workspace) {
    let (rows, width) = g.padded_rows();
    let Workspace { tf_parent: parent, tf_nodes: nodes, tf_added: added, order, order_w, seeds, size_pow, .. } = ws;
    let size_pow = &size_pow[..];
    for (i, (&v, &w)) in order.iter().zip(order_w.iter()).enumerate() {
        // The visiting order jumps around the volume; fetch a later voxel's neighbour row
        // and node while this one is being merged.
        if let Some(&ahead) = order.get(i + PREFETCH_ROW_AHEAD) {
            let row = &rows[ahead as usize * width..(ahead as usize + 1) * width];
            prefetch(&row[0]);
            if width > 16 {
                prefetch(&row[width - 1]); // 18 and 26 entries span two cache lines
            }
            prefetch(&nodes[ahead as usize]);
        }
        // A nearer voxel's row is in cache by now: fetch its added neighbours' parents.
        if let Some(&near) = order.get(i + PREFETCH_PARENTS_AHEAD) {
            for &u in &rows[near as usize * width..(near as usize + 1) * width] {
                if is_added(added, u) {
                    prefetch(&parent[u as usize]);
                }
            }
        }
        let vi = v as usize;
        added[vi / 64] |= 1 << (vi % 64);
        parent[vi] = v;
        nodes[vi] = TfNode { off: 0.0, top: w, size: 1 };
        let mut root = v;
        let mut alone = true;
        for &u in &rows[vi * width..(vi + 1) * width] {
            // The row padding (index V) is never added.
            if !is_added(added, u) {
                continue;
            }
            alone = false;
            let ru = find(parent, nodes, u);
            if ru == root {
                continue;
            }
            // `root` was created or last merged at weight w, so only `ru` has a range to
            // settle: the heights from its last change down to w, at its old size.
            settle(&mut nodes[ru as usize], w, size_pow);
            // Union by size; the absorbed root's offset becomes relative to the new root.
            let (big, small) =
                if nodes[ru as usize].size >= nodes[root as usize].size { (ru, root) } else { (root, ru) };
            let (big_off, big_size) = (nodes[big as usize].off, nodes[big as usize].size);
            let s = &mut nodes[small as usize];
            s.off -= big_off;
            parent[small as usize] = big;
            let small_size = s.size;
            nodes[big as usize].size = big_size + small_size;
            root = big;
        }
        if alone {
            seeds.push(v);
        }
    }
    // Every component lives on down to height 0, where the weight is 0.
    for &v in order.iter() {
        if parent[v as usize] == v {
            settle(&mut nodes[v as usize], 0.0, size_pow);
        }
    }
}

/// How many voxels ahead of the current one to prefetch the neighbour row and node, and
/// the parents of the neighbours already added.
const PREFETCH_ROW_AHEAD: usize = 8;
const PREFETCH_PARENTS_AHEAD: usize = 4;

/// Whether voxel `u` has been added: a bit per voxel (about 28 KiB at 2 mm, inside L1),
/// so the neighbours not yet added cost no access to the parent array at all.
#[inline(always)]
fn is_added(added: &[u64], u: u32) -> bool {
    added[u as usize / 64] >> (u % 64) & 1 != 0
}

#[inline(always)]
fn prefetch<T>(x: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint; it reads nothing and the address is a valid reference.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(x as *const T as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

#[inline]
fn settle(r: &mut TfNode, w: f64, size_pow: &[f64]) {
    if r.top != w {
        r.off += size_pow[r.size as usize] * (r.top - w);
        r.top = w;
    }
}

/// Root of `x` with path halving; a node that skips to its grandparent absorbs its
/// parent's offset so path sums are unchanged.
#[inline]
fn find(parent: &mut [u32], nodes: &mut [TfNode], mut x: u32) -> u32 {
    loop {
        let p = parent[x as usize];
        if p == x {
            return x;
        }
        let gp = parent[p as usize];
        if gp == p {
            return p;
        }
        let p_off = nodes[p as usize].off;
        nodes[x as usize].off += p_off;
        parent[x as usize] = gp;
        x = gp;
    }
}

/// Value of voxel `v` (sum of offsets to the root), compressing its path fully so later
/// queries through it are O(1).
#[inline]
fn path_sum(parent: &mut [u32], nodes: &mut [TfNode], stack: &mut Vec<u32>, v: u32) -> f64 {
    let mut x = v;
    let mut p = parent[x as usize];
    // The common cases, a root or a child of one, need no stack.
    if p == x {
        return nodes[x as usize].off;
    }
    if parent[p as usize] == p {
        return nodes[x as usize].off + nodes[p as usize].off;
    }
    stack.clear();
    while p != x {
        stack.push(x);
        x = p;
        p = parent[x as usize];
    }
    let root = x;
    // From the node just below the root downwards, fold each parent's (already
    // root-relative) offset into the child and point the child at the root.
    for i in (0..stack.len().saturating_sub(1)).rev() {
        let (c, p) = (stack[i] as usize, stack[i + 1] as usize);
        let p_off = nodes[p].off;
        nodes[c].off += p_off;
        parent[c] = root;
    }
    nodes[v as usize].off + nodes[root as usize].off
}

fn settle_values(ws: &mut Workspace, scale: f64, out: &mut [f32]) {
    assert_eq!(out.len() + 1, ws.tf_parent.len(), "output length must equal the number of in-mask voxels");
    let Workspace { tf_parent: parent, tf_nodes: nodes, stack, .. } = ws;
    // In voxel order rather than visiting order: neighbouring nodes share cache lines.
    for (v, o) in out.iter_mut().enumerate() {
        *o = if parent[v] == UNSEEN { 0.0 } else { (path_sum(parent, nodes, stack, v as u32) * scale) as f32 };
    }
}

fn settle_max(ws: &mut Workspace, scale: f64) -> f32 {
    let Workspace { tf_parent: parent, tf_nodes: nodes, seeds, stack, .. } = ws;
    let mut best = 0.0f64;
    for &v in seeds.iter() {
        best = best.max(path_sum(parent, nodes, stack, v));
    }
    (best * scale) as f32
}
