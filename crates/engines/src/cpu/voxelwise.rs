//! The CPU engine's path for voxelwise regressors (--vxl): every voxel has its own basis
//! Q_v, so the coefficients u = Q_v' P_j E_v are formed voxel by voxel (in f64, stored as
//! f32) instead of by the batch's shared product; the epilogue and the reductions are the
//! shared path's ([`reduce_tile`]), so a run whose voxelwise regressor is the same at every
//! voxel gives the ordinary run's statistics up to the product's rounding.
use super::kernels::{reduce_tile, Batch, Coefficients};
use super::{PERM_BLOCK, TILE};
use std::ops::Range;
use voxflip_stats::PermSet;

/// The batch's permutations as source rows and signs: row m of permutation jj of the
/// batch reads row `src[jj * n + m]` of Q with sign `sign[jj * n + m]` (the coefficient rows'
/// convention, `PermSet::coefficient_rows`).
pub(super) struct PermRows {
    src: Vec<usize>,
    sign: Vec<f64>,
}

impl PermRows {
    pub(super) fn new(perms: &PermSet, range: Range<usize>) -> PermRows {
        let n = perms.n;
        let mut src = Vec::with_capacity(range.len() * n);
        let mut sign = Vec::with_capacity(range.len() * n);
        for j in range {
            for m in 0..n {
                src.push(perms.source(j, m));
                sign.push(perms.sign(j, m) as f64);
            }
        }
        PermRows { src, sign }
    }
}

/// A worker's buffers: the tile's residuals (TILE x N, voxel-major, f64) and U.
#[derive(Default)]
pub(super) struct VoxelwiseScratch {
    packed: Vec<f64>,
    ubuf: Vec<f32>,
}

/// The tile of voxels at `v0`: each voxel's coefficients from its own basis, then the
/// shared epilogue and reductions.
pub(super) fn tile(batch: &Batch, rows: &PermRows, v0: usize, scratch: &mut VoxelwiseScratch, maxes: &mut [f32]) {
    let p = batch.p;
    let (n, v) = (p.n, p.v);
    let w = TILE.min(v - v0);
    let VoxelwiseScratch { packed, ubuf } = scratch;
    packed.clear();
    packed.resize(TILE * n, 0.0);
    for x in 0..w {
        for i in 0..n {
            packed[x * n + i] = p.e[i * v + v0 + x] as f64;
        }
    }
    let bases = p.voxel_qbasis.as_deref().expect("the voxelwise path has per-voxel bases");
    let mut product = PerVoxel { rows, bases, packed, n, q: p.q, v0, w };
    reduce_tile::<TILE, PERM_BLOCK>(batch, v0, ubuf, maxes, &mut product);
}

/// u_k = sum_m sign_m Q_v[src_m, k] E_v[m] for every voxel of the tile.
struct PerVoxel<'a> {
    rows: &'a PermRows,
    bases: &'a [f32],
    packed: &'a [f64],
    n: usize,
    q: usize,
    v0: usize,
    w: usize,
}

impl Coefficients for PerVoxel<'_> {
    fn produce(&mut self, pb: usize, np: usize, ubuf: &mut [f32]) {
        let (n, q) = (self.n, self.q);
        let mut u = vec![0f64; q];
        for j in 0..np {
            let base = (pb + j) * n;
            let src = &self.rows.src[base..base + n];
            let sign = &self.rows.sign[base..base + n];
            for x in 0..TILE {
                if x >= self.w {
                    // Padding voxels (ss = 0) take any value; zeros keep them finite.
                    for k in 0..q {
                        ubuf[(j * q + k) * TILE + x] = 0.0;
                    }
                    continue;
                }
                let qv = &self.bases[(self.v0 + x) * n * q..(self.v0 + x + 1) * n * q];
                let ev = &self.packed[x * n..(x + 1) * n];
                u.iter_mut().for_each(|a| *a = 0.0);
                for m in 0..n {
                    let we = sign[m] * ev[m];
                    let row = &qv[src[m] * q..(src[m] + 1) * q];
                    for k in 0..q {
                        u[k] += row[k] as f64 * we;
                    }
                }
                for k in 0..q {
                    ubuf[(j * q + k) * TILE + x] = u[k] as f32;
                }
            }
        }
    }
}
