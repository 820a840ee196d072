//! The reference TFCE engine: the implementation voxflip shipped before the faster one in
//! [`super::tfce`], kept unchanged (array-of-structs nodes, per-voxel level lookups) as the
//! oracle the tests hold the fast engine against bit for bit, and as the baseline
//! `voxflip bench` times it against. The algorithm and its numerics are described in
//! [`super::tfce`]; the public functions here compute exactly what their counterparts
//! without `_reference` compute.

use super::graph::MaskGraph;
use super::levels::{tfce_levels, TooManyLevels, MAX_TFCE_LEVELS};
use super::tfce::{enhanced_in, TfceParams};
use super::workspace::{pow_fast, Node, Workspace};

/// Stepwise TFCE (randomise's discretization) of `map` with level step `dh`.
///
/// `dh` is fixed by the caller for all permutations (randomise: max of the observed map /
/// 100). `g` must have been built with `p.conn`. Returns all zeros when `dh` is not a
/// positive finite number (no level can be formed, e.g. an observed map with no positive
/// voxel). An error when the map needs more than [`MAX_TFCE_LEVELS`] levels.
pub fn tfce_stepwise_reference(
    g: &MaskGraph,
    map: &[f32],
    p: &TfceParams,
    dh: f32,
    ws: &mut Workspace,
) -> Result<Vec<f32>, TooManyLevels> {
    let mut out = vec![0.0f32; g.len()];
    tfce_stepwise_reference_into(g, map, p, dh, ws, &mut out)?;
    Ok(out)
}

/// [`tfce_stepwise_reference`] written into `out` (length V), allocating nothing once `ws` is warm.
pub fn tfce_stepwise_reference_into(
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
            for &v in ws.order.iter().rev() {
                if ws.level[v as usize] != 0 {
                    break;
                }
                out[v as usize] = 0.0;
            }
        }
    } else {
        out.fill(0.0);
    }
    Ok(())
}

/// The maximum of [`tfce_stepwise_reference`] over the map (0 when nothing is enhanced), for the
/// FWE null. Cheaper than the full map: only voxels that started a component can hold the
/// maximum (such a voxel shares every lower level with the voxels that joined it later and
/// has extra levels of its own), so only their values are summed.
pub fn tfce_stepwise_reference_max(
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
pub fn tfce_exact_reference(g: &MaskGraph, map: &[f32], p: &TfceParams, ws: &mut Workspace) -> Vec<f32> {
    let mut out = vec![0.0f32; g.len()];
    tfce_exact_reference_into(g, map, p, ws, &mut out);
    out
}

/// [`tfce_exact_reference`] written into `out` (length V).
pub fn tfce_exact_reference_into(g: &MaskGraph, map: &[f32], p: &TfceParams, ws: &mut Workspace, out: &mut [f32]) {
    prepare_exact(g, map, p, ws);
    settle_values(ws, 1.0 / (p.h as f64 + 1.0), out);
}

/// The maximum of [`tfce_exact_reference`] (see [`tfce_stepwise_reference_max`] for why it is cheaper).
pub fn tfce_exact_reference_max(g: &MaskGraph, map: &[f32], p: &TfceParams, ws: &mut Workspace) -> f32 {
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
    ws.reset_tfce_reference(n);
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
    // at most a step or two (rounding, accumulated thresholds); the table decides.
    let inv_dh = 1.0 / dh as f64;
    let hist = &mut ws.hist;
    hist.clear();
    hist.resize(top_level + 2, 0);
    let mut n_active = 0usize;
    for v in 0..n {
        let t = map[v];
        if !enhanced_in(g, map, v) {
            continue;
        }
        let mut k = ((t as f64 * inv_dh) as usize).min(top_level);
        while k < top_level && hs[k + 1] < t {
            k += 1;
        }
        while hs[k] >= t {
            k -= 1; // h_0 = 0 < t, so this stops
        }
        ws.level[v] = k as u32;
        hist[k] += 1;
        n_active += 1;
    }
    // Counting sort, highest level first: bucket start of level k = count above k.
    let mut start = 0u32;
    for k in (0..=top_level).rev() {
        let c = hist[k];
        hist[k] = start;
        start += c;
    }
    ws.order.resize(n_active, 0);
    for v in 0..n {
        if enhanced_in(g, map, v) {
            let k = ws.level[v] as usize;
            ws.order[hist[k] as usize] = v as u32;
            hist[k] += 1;
        }
    }

    ws.prepare_size_pow(n, p.e);
    // Move the tables out while the engine borrows the rest of `ws` (no copies).
    let level = std::mem::take(&mut ws.level);
    let level_q = std::mem::take(&mut ws.level_q);
    grow_components(g, ws, |v| level_q[level[v as usize] as usize + 1]);
    ws.level = level;
    ws.level_q = level_q;
    Ok(true)
}

/// Orders the positive voxels by decreasing value and runs the engine with W(h) = h^{H+1}.
fn prepare_exact(g: &MaskGraph, map: &[f32], p: &TfceParams, ws: &mut Workspace) {
    assert_eq!(map.len(), g.len(), "map length must equal the number of in-mask voxels");
    assert_eq!(g.connectivity(), p.conn, "TFCE connectivity differs from the mask graph's");
    let n = g.len();
    ws.reset_tfce_reference(n);
    // Positive finite f32 values order like their bit patterns, so the keys sort by value.
    ws.keys.clear();
    ws.keys.extend(
        map.iter()
            .enumerate()
            .filter(|&(v, _)| enhanced_in(g, map, v))
            .map(|(v, &x)| ((x.to_bits() as u64) << 32) | v as u64),
    );
    radix_sort_high32(&mut ws.keys, &mut ws.keys_tmp, &mut ws.hist);
    ws.order.clear();
    ws.order.extend(ws.keys.iter().rev().map(|&k| k as u32));
    ws.prepare_size_pow(n, p.e);
    let hp1 = p.h as f64 + 1.0;
    grow_components(g, ws, |v| pow_fast(map[v as usize] as f64, hp1));
}

/// LSD radix sort of `keys` by their upper 32 bits (three passes of 11 bits); stable, so
/// equal values stay in voxel order.
fn radix_sort_high32(keys: &mut Vec<u64>, tmp: &mut Vec<u64>, hist: &mut Vec<u32>) {
    const BITS: u32 = 11;
    const BUCKETS: usize = 1 << BITS;
    tmp.clear();
    tmp.resize(keys.len(), 0);
    for pass in 0..3 {
        let shift = 32 + pass * BITS;
        hist.clear();
        hist.resize(BUCKETS, 0);
        for &k in keys.iter() {
            hist[((k >> shift) as usize) & (BUCKETS - 1)] += 1;
        }
        let mut sum = 0u32;
        for h in hist.iter_mut() {
            let c = *h;
            *h = sum;
            sum += c;
        }
        for &k in keys.iter() {
            let b = ((k >> shift) as usize) & (BUCKETS - 1);
            tmp[hist[b] as usize] = k;
            hist[b] += 1;
        }
        std::mem::swap(keys, tmp);
    }
}

// ---------------------------------------------------------------------------------------
// Engine

/// Adds the voxels of `ws.order` (non-increasing `weight`) one by one, merging components
/// and settling their contributions lazily (see the module notes).
fn grow_components(g: &MaskGraph, ws: &mut Workspace, weight: impl Fn(u32) -> f64) {
    let size_pow = std::mem::take(&mut ws.size_pow);
    let (rows, width) = g.padded_rows();
    let Workspace { nodes, added, order, seeds, .. } = ws;
    for (i, &v) in order.iter().enumerate() {
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
        let w = weight(v);
        let vi = v as usize;
        nodes[vi] = Node { parent: v, size: 1, off: 0.0, top: w };
        added[vi] = true;
        let mut root = v;
        let mut alone = true;
        for &u in &rows[vi * width..(vi + 1) * width] {
            // The row padding (index V) is never added.
            if !added[u as usize] {
                continue;
            }
            alone = false;
            let ru = find(nodes, u);
            if ru == root {
                continue;
            }
            // `root` was created or last merged at weight w, so only `ru` has a range to
            // settle: the heights from its last change down to w, at its old size.
            settle(&mut nodes[ru as usize], w, &size_pow);
            // Union by size; the absorbed root's offset becomes relative to the new root.
            let (big, small) =
                if nodes[ru as usize].size >= nodes[root as usize].size { (ru, root) } else { (root, ru) };
            let (big_off, big_size) = (nodes[big as usize].off, nodes[big as usize].size);
            let s = &mut nodes[small as usize];
            s.off -= big_off;
            s.parent = big;
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
        let n = &mut nodes[v as usize];
        if n.parent == v {
            settle(n, 0.0, &size_pow);
        }
    }
    ws.size_pow = size_pow;
}

/// How many voxels ahead of the current one to prefetch the neighbour row and node.
/// (Prefetching the nodes of the neighbours too measured slower: more traffic than help.)
const PREFETCH_ROW_AHEAD: usize = 8;

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
fn settle(r: &mut Node, w: f64, size_pow: &[f64]) {
    if r.top != w {
        r.off += size_pow[r.size as usize] * (r.top - w);
        r.top = w;
    }
}

/// Root of `x` with path halving; a node that skips to its grandparent absorbs its
/// parent's offset so path sums are unchanged.
#[inline]
fn find(nodes: &mut [Node], mut x: u32) -> u32 {
    loop {
        let p = nodes[x as usize].parent;
        if p == x {
            return x;
        }
        let (gp, p_off) = (nodes[p as usize].parent, nodes[p as usize].off);
        if gp == p {
            return p;
        }
        let n = &mut nodes[x as usize];
        n.off += p_off;
        n.parent = gp;
        x = gp;
    }
}

/// Value of voxel `v` (sum of offsets to the root), compressing its path fully so later
/// queries through it are O(1).
#[inline]
fn path_sum(nodes: &mut [Node], stack: &mut Vec<u32>, v: u32) -> f64 {
    stack.clear();
    let mut x = v;
    while nodes[x as usize].parent != x {
        stack.push(x);
        x = nodes[x as usize].parent;
    }
    let root = x;
    // From the node just below the root downwards, fold each parent's (already
    // root-relative) offset into the child and point the child at the root.
    for i in (0..stack.len().saturating_sub(1)).rev() {
        let (c, p) = (stack[i] as usize, stack[i + 1] as usize);
        let p_off = nodes[p].off;
        nodes[c].off += p_off;
        nodes[c].parent = root;
    }
    if v == root {
        nodes[root as usize].off
    } else {
        nodes[v as usize].off + nodes[root as usize].off
    }
}

fn settle_values(ws: &mut Workspace, scale: f64, out: &mut [f32]) {
    assert_eq!(out.len() + 1, ws.added.len(), "output length must equal the number of in-mask voxels");
    out.fill(0.0);
    let Workspace { nodes, added, stack, .. } = ws;
    // In voxel order rather than visiting order: neighbouring nodes share cache lines.
    for (v, o) in out.iter_mut().enumerate() {
        if added[v] {
            *o = (path_sum(nodes, stack, v as u32) * scale) as f32;
        }
    }
}

fn settle_max(ws: &mut Workspace, scale: f64) -> f32 {
    let Workspace { nodes, seeds, stack, .. } = ws;
    let mut best = 0.0f64;
    for &v in seeds.iter() {
        best = best.max(path_sum(nodes, stack, v));
    }
    (best * scale) as f32
}
