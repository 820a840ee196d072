//! Connected components of a thresholded map, and the cluster extent / mass null statistics.
//!
//! Supra-threshold means `map[v] >= thr`, as randomise does (`binarise(thr)` in FSL is
//! inclusive). NaN is never supra-threshold. One scan in voxel order with union-find over
//! the backward neighbours labels the whole map in O(V α(V)).

use super::graph::MaskGraph;
use super::workspace::{Workspace, UNSEEN};

/// Whether a voxel enters the clusters at cluster-forming threshold `thr`.
#[inline]
pub fn above_cluster_threshold(value: f32, thr: f32) -> bool {
    value >= thr
}

/// Root of `x` with path halving (every other node on the path skips to its grandparent).
#[inline]
fn find(parent: &mut [u32], mut x: u32) -> u32 {
    loop {
        let p = parent[x as usize];
        if p == x {
            return x;
        }
        let gp = parent[p as usize];
        parent[x as usize] = gp;
        x = gp;
    }
}

/// Joins every supra-threshold voxel with its supra-threshold neighbours. Afterwards
/// `ws.parent[v]` is `UNSEEN` below threshold, roots hold `ws.size` (voxel count) and
/// `ws.off` (sum of the map over the component).
fn build_components(g: &MaskGraph, map: &[f32], thr: f32, ws: &mut Workspace) {
    assert_eq!(map.len(), g.len(), "map length must equal the number of in-mask voxels");
    ws.reset_labels(g.len());
    let Workspace { parent, size, off, .. } = ws;
    for v in 0..g.len() {
        if !above_cluster_threshold(map[v], thr) {
            continue;
        }
        parent[v] = v as u32;
        size[v] = 1;
        off[v] = map[v] as f64;
        let mut rv = v as u32;
        for &u in g.neighbours(v) {
            if u as usize >= v {
                break; // neighbours are ascending; the rest are not scanned yet
            }
            if parent[u as usize] == UNSEEN {
                continue;
            }
            let ru = find(parent, u);
            if ru == rv {
                continue;
            }
            // Union by size keeps the trees shallow.
            let (big, small) = if size[ru as usize] >= size[rv as usize] { (ru, rv) } else { (rv, ru) };
            parent[small as usize] = big;
            size[big as usize] += size[small as usize];
            off[big as usize] += off[small as usize];
            rv = big;
        }
    }
}

/// Labels the connected components of `{v : map[v] >= thr}`.
///
/// Returns one label per voxel (0 below threshold, else 1..=n) and n. Label 1 is the
/// largest cluster; equal sizes are ordered by their smallest voxel index, so labels do
/// not depend on how the union-find happened to pick roots.
pub fn label_components(g: &MaskGraph, map: &[f32], thr: f32, ws: &mut Workspace) -> (Vec<u32>, u32) {
    build_components(g, map, thr, ws);
    let n_vox = g.len();
    // Register each component when its smallest voxel is met (index order), remembering
    // per root which component it is; `ws.order` serves as that per-voxel scratch.
    let mut sizes: Vec<u32> = Vec::new(); // per component, in first-seen order
    let slot = &mut ws.order;
    slot.clear();
    slot.resize(n_vox, UNSEEN);
    for v in 0..n_vox {
        if ws.parent[v] == UNSEEN {
            continue;
        }
        let r = find(&mut ws.parent, v as u32) as usize;
        if slot[r] == UNSEEN {
            slot[r] = sizes.len() as u32;
            sizes.push(ws.size[r]);
        }
    }
    // Stable sort keeps first-seen (smallest voxel index) order among equal sizes.
    let mut by_size: Vec<u32> = (0..sizes.len() as u32).collect();
    by_size.sort_by(|&a, &b| sizes[b as usize].cmp(&sizes[a as usize]));
    let mut label_of = vec![0u32; sizes.len()];
    for (rank, &c) in by_size.iter().enumerate() {
        label_of[c as usize] = rank as u32 + 1;
    }
    let mut labels = vec![0u32; n_vox];
    for v in 0..n_vox {
        if ws.parent[v] != UNSEEN {
            let r = find(&mut ws.parent, v as u32) as usize;
            labels[v] = label_of[ws.order[r] as usize];
        }
    }
    (labels, sizes.len() as u32)
}

/// The largest cluster extent (voxel count) and the largest cluster mass (sum of the map
/// over the cluster's voxels) at threshold `thr`, for the cluster-wise null distributions
/// (randomise `-c` is extent, `-C` is mass). (0, 0.0) when no voxel reaches `thr`.
/// Masses are summed in f64 so large clusters do not lose their small voxels.
pub fn cluster_sizes_masses(g: &MaskGraph, map: &[f32], thr: f32, ws: &mut Workspace) -> (u32, f32) {
    build_components(g, map, thr, ws);
    let mut max_extent = 0u32;
    let mut max_mass = f64::NEG_INFINITY;
    for v in 0..g.len() {
        if ws.parent[v] == v as u32 {
            max_extent = max_extent.max(ws.size[v]);
            max_mass = max_mass.max(ws.off[v]);
        }
    }
    if max_extent == 0 {
        return (0, 0.0);
    }
    (max_extent, max_mass as f32)
}
