//! The cluster tables that go into papers, in the spirit of FSL's `cluster` tool.
//!
//! Clusters are the components of `{stat >= thr}` under the graph's connectivity, numbered
//! 1 = largest (FSL `cluster` numbers the other way round, largest = highest index, but
//! also lists the largest first). Coordinates are world millimetres through the image's
//! voxel-to-world affine (the sform/qform rows), applied to 0-based voxel indices.

use std::fmt::Write;

use super::graph::{unravel, Connectivity, MaskGraph, OUTSIDE};
use super::labels::label_components;
use super::workspace::Workspace;

/// Voxel indices (x, y, z) to world mm: `affine * [x, y, z, 1]`.
fn to_world(affine: &[[f64; 4]; 3], p: [f64; 3]) -> [f64; 3] {
    let mut w = [0.0; 3];
    for (r, row) in affine.iter().enumerate() {
        w[r] = row[0] * p[0] + row[1] * p[1] + row[2] * p[2] + row[3];
    }
    w
}

fn voxel_point(g: &MaskGraph, v: usize) -> [f64; 3] {
    let c = g.coords(v);
    [c[0] as f64, c[1] as f64, c[2] as f64]
}

struct ClusterSummary {
    voxels: u64,
    peak: f32,
    peak_voxel: usize,
    weight: f64,
    weighted: [f64; 3],
    plain: [f64; 3],
    min_p: f32,
}

/// One row per cluster of `{stat_map >= thr}`, largest first (TSV with a header):
///
/// `cluster_index voxels volume_mm3 peak_stat peak_x peak_y peak_z cog_x cog_y cog_z corrected_p`
///
/// - peak: the voxel with the largest statistic (the smallest voxel index among ties);
/// - cog: centre of gravity weighted by the statistic, as FSL `cluster` does (the plain
///   centroid if the weights do not sum to a positive number, possible only for thr <= 0);
/// - corrected_p: the smallest corrected p (not 1-p) in the cluster.
pub fn cluster_table(
    g: &MaskGraph,
    stat_map: &[f32],
    thr: f32,
    corrp_map: &[f32],
    affine: &[[f64; 4]; 3],
    voxel_volume_mm3: f64,
) -> String {
    assert_eq!(corrp_map.len(), g.len(), "corrp_map length must equal the number of in-mask voxels");
    let (labels, n) = label_components(g, stat_map, thr, &mut Workspace::new());
    let mut clusters: Vec<ClusterSummary> = (0..n)
        .map(|_| ClusterSummary {
            voxels: 0,
            peak: f32::NEG_INFINITY,
            peak_voxel: 0,
            weight: 0.0,
            weighted: [0.0; 3],
            plain: [0.0; 3],
            min_p: f32::INFINITY,
        })
        .collect();
    for v in 0..g.len() {
        if labels[v] == 0 {
            continue;
        }
        let c = &mut clusters[labels[v] as usize - 1];
        let t = stat_map[v];
        let pt = voxel_point(g, v);
        c.voxels += 1;
        if t > c.peak {
            // Strict: ties keep the first (smallest) voxel index.
            c.peak = t;
            c.peak_voxel = v;
        }
        c.weight += t as f64;
        for d in 0..3 {
            c.weighted[d] += t as f64 * pt[d];
            c.plain[d] += pt[d];
        }
        c.min_p = c.min_p.min(corrp_map[v]);
    }

    let mut out = String::from(
        "cluster_index\tvoxels\tvolume_mm3\tpeak_stat\tpeak_x\tpeak_y\tpeak_z\tcog_x\tcog_y\tcog_z\tcorrected_p\n",
    );
    for (i, c) in clusters.iter().enumerate() {
        let peak = to_world(affine, voxel_point(g, c.peak_voxel));
        let cog_vox =
            if c.weight > 0.0 { c.weighted.map(|s| s / c.weight) } else { c.plain.map(|s| s / c.voxels as f64) };
        let cog = to_world(affine, cog_vox);
        let _ = writeln!(
            out,
            "{}\t{}\t{:.3}\t{:.4}\t{:.2}\t{:.2}\t{:.2}\t{:.2}\t{:.2}\t{:.2}\t{}",
            i + 1,
            c.voxels,
            c.voxels as f64 * voxel_volume_mm3,
            c.peak,
            peak[0],
            peak[1],
            peak[2],
            cog[0],
            cog[1],
            cog[2],
            c.min_p
        );
    }
    out
}

/// Local maxima within the clusters of `{stat_map >= thr}` (TSV with a header):
///
/// `cluster_index stat x y z corrected_p`
///
/// A local maximum is a cluster voxel whose statistic is >= that of each of its 26 grid
/// neighbours in the same cluster (whatever connectivity formed the clusters). Per
/// cluster, maxima are taken in decreasing statistic (ties: smallest voxel index) and
/// kept when at least `min_distance_mm` (world distance) from every maximum already kept,
/// up to `max_per_cluster` (FSL `cluster` has `--num` and `--peakdist` for these).
/// Rows are ordered by cluster, then by decreasing statistic.
pub fn local_maxima_table(
    g: &MaskGraph,
    stat_map: &[f32],
    thr: f32,
    corrp_map: &[f32],
    affine: &[[f64; 4]; 3],
    max_per_cluster: usize,
    min_distance_mm: f64,
) -> String {
    assert_eq!(corrp_map.len(), g.len(), "corrp_map length must equal the number of in-mask voxels");
    let (labels, _) = label_components(g, stat_map, thr, &mut Workspace::new());
    let lookup = g.grid_lookup();
    let dims = g.dims;
    let around = Connectivity::C26.offsets();

    // (cluster, voxel) of every local maximum.
    let mut candidates: Vec<(u32, usize)> = Vec::new();
    for v in 0..g.len() {
        let l = labels[v];
        if l == 0 {
            continue;
        }
        let [x, y, z] = unravel(g.voxels[v] as usize, dims);
        let is_max = around.iter().all(|&[dx, dy, dz]| {
            let q = [x as i64 + dx, y as i64 + dy, z as i64 + dz];
            if (0..3).any(|d| q[d] < 0 || q[d] >= dims[d] as i64) {
                return true;
            }
            let u = lookup[q[0] as usize + dims[0] * (q[1] as usize + dims[1] * q[2] as usize)];
            u == OUTSIDE || labels[u as usize] != l || stat_map[v] >= stat_map[u as usize]
        });
        if is_max {
            candidates.push((l, v));
        }
    }
    candidates.sort_by(|a, b| a.0.cmp(&b.0).then(stat_map[b.1].total_cmp(&stat_map[a.1])).then(a.1.cmp(&b.1)));

    let mut out = String::from("cluster_index\tstat\tx\ty\tz\tcorrected_p\n");
    let mut kept: Vec<[f64; 3]> = Vec::new();
    let mut current = 0u32;
    for &(l, v) in &candidates {
        if l != current {
            current = l;
            kept.clear();
        }
        if kept.len() >= max_per_cluster {
            continue;
        }
        let w = to_world(affine, voxel_point(g, v));
        let far_enough = kept.iter().all(|k| {
            let d2: f64 = (0..3).map(|d| (k[d] - w[d]).powi(2)).sum();
            d2.sqrt() >= min_distance_mm
        });
        if !far_enough {
            continue;
        }
        kept.push(w);
        let _ = writeln!(out, "{}\t{:.4}\t{:.2}\t{:.2}\t{:.2}\t{}", l, stat_map[v], w[0], w[1], w[2], corrp_map[v]);
    }
    out
}
