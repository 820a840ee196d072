//! randomise's `--permout`: the statistic map of every permutation (and its TFCE and
//! cluster maps where those are asked for), named as randomise names them:
//! `{prefix}_vox_perm00001_tstat1` for permutation 1 (the identity), `_tfce_perm…`,
//! `_clustere_perm…`, `_clusterm_perm…`. One map per permutation and contrast is a lot of
//! files, so a run is refused up front above [`MAX_MAPS`] maps or [`MAX_BYTES`] of
//! uncompressed map data.
use crate::error::{Error, Result};
use crate::outputs::Outputs;
use voxflip_engines::Scheduler;
use voxflip_stats::spatial::{observed_cluster_values, SpatialJob, Workspace};
use voxflip_stats::{ContrastProblem, PermSet};

/// At most this many permuted maps per run.
pub const MAX_MAPS: usize = 10_000;
/// At most this much uncompressed map data per run (grid voxels x 4 bytes x maps).
pub const MAX_BYTES: u64 = 4 << 30;

/// Permutations per engine call while the maps are formed.
const BATCH: usize = 64;

/// Refuses, in one line, a `--permout` run that would write `maps` maps of `grid_voxels`
/// voxels each.
pub fn check_size(maps: usize, grid_voxels: usize) -> Result<()> {
    let bytes = maps as u64 * grid_voxels as u64 * 4;
    if maps > MAX_MAPS || bytes > MAX_BYTES {
        return Err(Error::usage(format!(
            "--permout would write {maps} maps ({:.1} GiB uncompressed): at most {MAX_MAPS} maps and {} GiB; ask for fewer permutations with -n",
            bytes as f64 / (1u64 << 30) as f64,
            MAX_BYTES >> 30
        )));
    }
    Ok(())
}

/// randomise's raw cluster map (-R, --permout): each voxel its cluster's extent or mass
/// (`values` as [`observed_cluster_values`] gives them), 0 outside clusters.
pub fn raw_cluster_map(values: &[f32]) -> Vec<f32> {
    values.iter().map(|&x| if x.is_nan() { 0.0 } else { x }).collect()
}

/// The maps each permutation of a contrast adds: its statistic, and TFCE and cluster maps.
pub fn maps_per_permutation(job: (bool, Option<f32>, Option<f32>)) -> usize {
    1 + job.0 as usize + job.1.is_some() as usize + job.2.is_some() as usize
}

/// Writes the permuted maps of contrast `name` from `problem` (prepared on the scheduler's
/// engine), permutation 0 being `observed` (the observed map, computed in f64 on the host:
/// the engine's f32 map of the identity may differ from it in the last bits, and under ter
/// Braak is not the unpermuted data's). `job`: its TFCE step and cluster
/// thresholds, as its nulls used them.
pub fn write_permuted_maps(
    scheduler: &mut Scheduler,
    problem: &ContrastProblem,
    perms: &PermSet,
    observed: &[f32],
    job: Option<&SpatialJob>,
    name: &str,
    out: &mut Outputs,
) -> Result<()> {
    let v = problem.v;
    let mut ws = Workspace::new();
    let mut tfce = vec![0f32; v];
    let mut maps = vec![0f32; BATCH * v];
    for start in (0..perms.len()).step_by(BATCH) {
        let end = (start + BATCH).min(perms.len());
        let batch = &mut maps[..(end - start) * v];
        scheduler.permutation_maps(problem, perms, start..end, batch)?;
        if start == 0 {
            batch[..v].copy_from_slice(observed);
        }
        for (j, map) in (start..end).zip(batch.chunks_exact(v)) {
            let perm = format!("perm{:05}_{name}", j + 1);
            out.map(&format!("vox_{perm}"), map)?;
            let Some(job) = job else { continue };
            if job.tfce.is_some() {
                job.tfce_map(map, &mut ws, &mut tfce).map_err(|e| Error::usage(e.to_string()))?;
                out.map(&format!("tfce_{perm}"), &tfce)?;
            }
            let clusters = [("clustere", job.extent_thr, false), ("clusterm", job.mass_thr, true)];
            for (what, thr, is_mass) in clusters {
                let (Some(thr), Some(g)) = (thr, job.cluster_graph) else { continue };
                out.map(&format!("{what}_{perm}"), &raw_cluster_map(&observed_cluster_values(g, map, thr, is_mass)))?;
            }
        }
    }
    Ok(())
}
