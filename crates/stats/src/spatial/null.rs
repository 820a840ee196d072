//! Spatial statistics under permutation: TFCE and cluster extent / mass of every
//! permutation's map, reduced to their per-permutation maxima (and, for TFCE, per-voxel
//! exceedance counts), in the same pass and from the same permutation set as the
//! voxelwise test. Maps of one batch are held only while the batch is reduced.
use super::{cluster_sizes_masses, label_components, Connectivity, MaskGraph, TfceParams, TooManyLevels, Workspace};
use super::{tfce_exact_into, tfce_stepwise_into};
use rayon::prelude::*;
use std::cell::RefCell;

thread_local! {
    /// Each worker thread's workspace and TFCE output map, kept across batches (and
    /// contrasts): rayon calls a fold's initialiser once per split of the batch, and a
    /// fresh workspace there would allocate and fill its per-voxel buffers (several MB at
    /// 2 mm) and its s^E table again each time.
    static WORKER: RefCell<(Workspace, Vec<f32>)> = RefCell::new((Workspace::new(), Vec::new()));
}

/// TFCE as the user asked for it.
#[derive(Clone, Copy, Debug)]
pub struct TfceOptions {
    pub params: TfceParams,
    /// The exact integral (component tree) instead of randomise's stepwise sum.
    pub exact: bool,
    /// Step dh (--tfce_D); default max(observed) / 100 as randomise.
    pub step: Option<f32>,
}

/// What TFCE does at the outermost voxel layer of the grid (--tfce-edge).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TfceEdge {
    /// randomise's rule: those voxels get TFCE 0 and join no component
    /// ([`MaskGraph::without_grid_border`]), in stepwise and exact TFCE alike.
    #[default]
    Skip,
    /// Every in-mask voxel is enhanced (voxflip before randomise's rule was matched).
    Include,
}

/// Which spatial statistics to compute (randomise -T, -c/-C for t, -F/-S for F).
#[derive(Clone, Copy, Debug, Default)]
pub struct SpatialOptions {
    pub tfce: Option<TfceOptions>,
    /// TFCE at the grid's border (cluster inference always keeps the whole grid, as
    /// randomise's `connected_components`).
    pub tfce_edge: TfceEdge,
    pub t_extent: Option<f32>,
    pub t_mass: Option<f32>,
    pub f_extent: Option<f32>,
    pub f_mass: Option<f32>,
    /// Connectivity of the cluster-forming step (randomise: 26).
    pub cluster_conn: Option<Connectivity>,
}

impl SpatialOptions {
    pub fn any(&self) -> bool {
        self.tfce.is_some()
            || self.t_extent.is_some()
            || self.t_mass.is_some()
            || self.f_extent.is_some()
            || self.f_mass.is_some()
    }
}

/// The spatial work for one contrast.
pub struct SpatialJob<'a> {
    pub tfce: Option<(&'a MaskGraph, TfceOptions, f32)>,
    /// TFCE of the observed map (for exceedance counts), when counts are wanted.
    pub tfce_observed: Option<&'a [f32]>,
    pub cluster_graph: Option<&'a MaskGraph>,
    pub extent_thr: Option<f32>,
    pub mass_thr: Option<f32>,
}

/// Accumulated spatial nulls of one contrast.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpatialNull {
    pub tfce_max: Vec<f32>,
    pub tfce_counts: Vec<u32>,
    pub extent_max: Vec<f32>,
    pub mass_max: Vec<f32>,
}

impl SpatialNull {
    /// Append the nulls of later permutations (`other`) to these.
    pub fn append(&mut self, other: SpatialNull) {
        self.tfce_max.extend(other.tfce_max);
        self.extent_max.extend(other.extent_max);
        self.mass_max.extend(other.mass_max);
        crate::add_counts(&mut self.tfce_counts, other.tfce_counts);
    }
}

impl SpatialJob<'_> {
    /// TFCE of one map (all voxels); the job must have TFCE.
    pub fn tfce_map(&self, map: &[f32], ws: &mut Workspace, out: &mut [f32]) -> Result<(), TooManyLevels> {
        let (g, o, dh) = self.tfce.expect("tfce_map without TFCE");
        if o.exact {
            tfce_exact_into(g, map, &o.params, ws, out);
            Ok(())
        } else {
            tfce_stepwise_into(g, map, &o.params, dh, ws, out)
        }
    }

    /// Reduce a batch of maps (permutation-major, `v` voxels each) into `null`. An error
    /// (and `null` unchanged) when a map needs more TFCE levels than allowed.
    pub fn reduce(&self, maps: &[f32], v: usize, null: &mut SpatialNull) -> Result<(), TooManyLevels> {
        let nmaps = maps.len() / v;
        let want_counts = self.tfce_observed.is_some();
        type Acc = (Vec<(usize, f32, f32, f32)>, Vec<u32>);
        let (rows, counts) = maps
            .par_chunks(v)
            .enumerate()
            .try_fold(
                || -> Acc { (Vec::new(), if want_counts { vec![0u32; v] } else { Vec::new() }) },
                |(mut rows, mut counts), (j, map)| -> Result<Acc, TooManyLevels> {
                    WORKER.with(|worker| -> Result<(), TooManyLevels> {
                        let (ws, tf) = &mut *worker.borrow_mut();
                        tf.resize(v, 0.0);
                        let mut tmax = f32::NAN;
                        if self.tfce.is_some() {
                            self.tfce_map(map, ws, tf)?;
                            tmax = tf.iter().copied().fold(0f32, f32::max);
                            if let Some(obs) = self.tfce_observed {
                                for ((c, &t), &o) in counts.iter_mut().zip(tf.iter()).zip(obs) {
                                    *c += (t >= o) as u32;
                                }
                            }
                        }
                        let (mut ext, mut mass) = (f32::NAN, f32::NAN);
                        if let (Some(g), Some(thr)) = (self.cluster_graph, self.extent_thr) {
                            let (e, m) = cluster_sizes_masses(g, map, thr, ws);
                            ext = e as f32;
                            // -c and -C at one threshold share the components.
                            if self.mass_thr == Some(thr) {
                                mass = m;
                            }
                        }
                        if let (Some(g), Some(thr)) = (self.cluster_graph, self.mass_thr) {
                            if self.extent_thr != Some(thr) {
                                mass = cluster_sizes_masses(g, map, thr, ws).1;
                            }
                        }
                        rows.push((j, tmax, ext, mass));
                        Ok(())
                    })?;
                    Ok((rows, counts))
                },
            )
            .try_reduce(
                || (Vec::new(), if want_counts { vec![0u32; v] } else { Vec::new() }),
                |(mut ra, mut ca), (rb, cb)| {
                    ra.extend(rb);
                    for (a, b) in ca.iter_mut().zip(cb) {
                        *a += b;
                    }
                    Ok((ra, ca))
                },
            )?;
        let mut rows = rows;
        rows.sort_by_key(|r| r.0);
        debug_assert_eq!(rows.len(), nmaps);
        for (_, t, e, m) in rows {
            if self.tfce.is_some() {
                null.tfce_max.push(t);
            }
            if self.extent_thr.is_some() {
                null.extent_max.push(e);
            }
            if self.mass_thr.is_some() {
                null.mass_max.push(m);
            }
        }
        if want_counts {
            if null.tfce_counts.is_empty() {
                null.tfce_counts = vec![0; v];
            }
            for (a, b) in null.tfce_counts.iter_mut().zip(counts) {
                *a += b;
            }
        }
        Ok(())
    }
}

/// Per-voxel cluster statistic of the observed map: each supra-threshold voxel gets its
/// cluster's extent (or mass), others NaN.
pub fn observed_cluster_values(g: &MaskGraph, map: &[f32], thr: f32, mass: bool) -> Vec<f32> {
    let mut ws = Workspace::new();
    let (labels, n) = label_components(g, map, thr, &mut ws);
    let mut ext = vec![0f32; n as usize + 1];
    let mut sum = vec![0f64; n as usize + 1];
    for (&l, &x) in labels.iter().zip(map) {
        if l > 0 {
            ext[l as usize] += 1.0;
            sum[l as usize] += x as f64;
        }
    }
    labels
        .iter()
        .map(|&l| {
            if l == 0 {
                f32::NAN
            } else if mass {
                sum[l as usize] as f32
            } else {
                ext[l as usize]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spatial::tfce_stepwise_reference_into;

    /// `reduce` (parallel, per-thread workspaces reused across calls, -c and -C sharing one
    /// labelling at a common threshold) against a plain loop over the maps with fresh
    /// workspaces and the reference TFCE engine.
    #[test]
    fn reduce_equals_a_sequential_loop() {
        let dims = [7, 6, 5];
        let n: usize = dims.iter().product();
        let mask: Vec<bool> = (0..n).map(|i| i % 11 != 3).collect();
        let g6 = MaskGraph::from_mask(dims, &mask, Connectivity::C6);
        let g26 = MaskGraph::from_mask(dims, &mask, Connectivity::C26);
        let v = g6.len();
        let nmaps = 9;
        let maps: Vec<f32> =
            (0..nmaps * v).map(|i| ((i as f32 * 0.37).sin() * 2.0 + (i as f32 * 0.013).cos()) * 1.5).collect();
        let params = TfceParams::default();
        let opts = TfceOptions { params, exact: false, step: None };
        let dh = super::super::tfce_step_from_observed(&maps[..v]);
        let mut ws = Workspace::new();
        let mut observed = vec![0f32; v];
        tfce_stepwise_reference_into(&g6, &maps[..v], &params, dh, &mut ws, &mut observed).unwrap();
        for (ext, mass) in [(Some(1.0), Some(1.0)), (Some(1.0), Some(2.0)), (None, Some(0.5)), (Some(0.5), None)] {
            let job = SpatialJob {
                tfce: Some((&g6, opts, dh)),
                tfce_observed: Some(&observed),
                cluster_graph: Some(&g26),
                extent_thr: ext,
                mass_thr: mass,
            };
            // Twice, so the second call runs on the workspaces the first left behind.
            let mut got = SpatialNull::default();
            job.reduce(&maps, v, &mut got).unwrap();
            job.reduce(&maps, v, &mut got).unwrap();
            let mut want = SpatialNull { tfce_counts: vec![0; v], ..Default::default() };
            for _ in 0..2 {
                for m in maps.chunks(v) {
                    let mut ws = Workspace::new();
                    let mut tf = vec![0f32; v];
                    tfce_stepwise_reference_into(&g6, m, &params, dh, &mut ws, &mut tf).unwrap();
                    want.tfce_max.push(tf.iter().copied().fold(0f32, f32::max));
                    for ((c, &t), &o) in want.tfce_counts.iter_mut().zip(&tf).zip(&observed) {
                        *c += (t >= o) as u32;
                    }
                    if let Some(thr) = ext {
                        want.extent_max.push(cluster_sizes_masses(&g26, m, thr, &mut ws).0 as f32);
                    }
                    if let Some(thr) = mass {
                        want.mass_max.push(cluster_sizes_masses(&g26, m, thr, &mut ws).1);
                    }
                }
            }
            assert_eq!(got, want, "extent {ext:?}, mass {mass:?}");
        }
    }
}
