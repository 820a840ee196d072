//! Voxelwise regressors (randomise `--vxl`/`--vxf`): design columns whose values differ from
//! voxel to voxel, each voxel's taken from a 4D image (one volume per design row).
//!
//! randomise (`VoxelwiseDesign` and `analyseContrast` in randomise.cc) replaces design column
//! k by the voxel's values and partitions every voxel's design by the contrast on its own;
//! the permutations (and so whether the test is exhaustive, or flips signs) come from the
//! design as given, where the column is a placeholder. This builds the same thing in the
//! engine's form: for voxel v, the partition of M_v gives its basis Q_v and its residuals
//! E_v = R_Zv Y_v (under Freedman–Lane; the other confound methods as in [`crate::confound`]),
//! and permutation j's statistic comes from Q_v' P_j E_v with the shared epilogue, so a
//! voxelwise column equal at every voxel gives the ordinary run's statistic.
//!
//! A voxel whose own design is rank deficient (its regressor a copy of another column, or
//! constant where an intercept is present) has no statistic that the design defines: it gets
//! E_v = 0, so its statistic is 0 under every permutation (it is counted, for a warning).
use crate::confound::ConfoundMethod;
use crate::design::Contrast;
use crate::model::ContrastModel;
use crate::observed::ObservedFit;
use crate::problem::ContrastProblem;
use nalgebra::DMatrix;
use rayon::prelude::*;

/// The voxelwise regressors of a run: design column `columns[i]` (0-based) takes, at in-mask
/// voxel x and row r, the value `values[i][r * v + x]` (N x V, row-major like the data).
#[derive(Clone, Debug)]
pub struct VoxelwiseEvs {
    pub columns: Vec<usize>,
    pub values: Vec<Vec<f32>>,
}

impl VoxelwiseEvs {
    /// Voxel `x`'s design: `m` with the voxelwise columns replaced by that voxel's values.
    pub fn design_at(&self, m: &DMatrix<f64>, v: usize, x: usize) -> DMatrix<f64> {
        let mut mv = m.clone();
        for (&col, vals) in self.columns.iter().zip(&self.values) {
            for r in 0..m.nrows() {
                mv[(r, col)] = vals[r * v + x] as f64;
            }
        }
        mv
    }
}

/// One voxel's part of the problem: its E column, ||E||^2 and basis Q_v (n x q), and its
/// unpermuted fit in f64 (statistic, sigma^2).
struct VoxelFit {
    e: Vec<f32>,
    ss: f32,
    basis: Vec<f32>,
    observed: (f64, f64),
}

/// The engine's problem of a contrast with voxelwise regressors, its observed fit (each
/// voxel's own, in f64: [`crate::observed`]) and how many voxels have a rank-deficient
/// design (statistic 0).
pub struct VoxelwiseProblem {
    pub problem: ContrastProblem,
    pub observed: ObservedFit,
    pub rank_deficient: usize,
}

/// The engine's problem of `contrast` when design `m` has voxelwise columns `evs`, on data
/// `y` (N x V, row-major) under `method`, with the observed fit. `base` is the partition of `m` as given (its basis goes in `qbasis`, its
/// degrees of freedom are every full-rank voxel's).
pub fn voxelwise_problem(
    m: &DMatrix<f64>,
    base: &ContrastModel,
    contrast: &Contrast,
    evs: &VoxelwiseEvs,
    y: &[f32],
    v: usize,
    method: ConfoundMethod,
) -> VoxelwiseProblem {
    let n = m.nrows();
    // The shared fields (kind, s, q, dof, the base basis) from a problem of one zero voxel.
    let shared = base.problem_for(&vec![0f32; n], 1, method);
    let q = shared.q;
    // Each voxel's E column, ||E||^2 and Q_v (None: rank deficient), in parallel.
    let per_voxel: Vec<Option<VoxelFit>> = (0..v)
        .into_par_iter()
        .map(|x| {
            let model = ContrastModel::new(&evs.design_at(m, v, x), contrast).ok()?;
            let yv: Vec<f32> = (0..n).map(|i| y[i * v + x]).collect();
            let p = model.problem_for(&yv, 1, method);
            let o = model.observed_fit(&yv, 1, method);
            (p.q == q && p.dof == shared.dof).then(|| VoxelFit {
                e: p.e,
                ss: p.ss[0],
                basis: p.qbasis,
                observed: (o.stat[0], o.sigma2[0]),
            })
        })
        .collect();
    let mut e = vec![0f32; n * v];
    let mut ss = vec![0f32; v];
    let mut vq = vec![0f32; v * n * q];
    let mut observed = ObservedFit { stat: vec![0.0; v], sigma2: vec![0.0; v] };
    let mut rank_deficient = 0;
    for (x, pv) in per_voxel.into_iter().enumerate() {
        match pv {
            Some(fit) => {
                for i in 0..n {
                    e[i * v + x] = fit.e[i];
                }
                ss[x] = fit.ss;
                vq[x * n * q..(x + 1) * n * q].copy_from_slice(&fit.basis);
                (observed.stat[x], observed.sigma2[x]) = fit.observed;
            }
            None => rank_deficient += 1,
        }
    }
    let problem = ContrastProblem { v, e, ss, voxel_qbasis: Some(vq), ..shared };
    VoxelwiseProblem { problem, observed, rank_deficient }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::{statistic, StatKind};

    /// Each voxel's observed t from the problem equals an explicit refit of that voxel's
    /// design in f64 (pseudo-inverse, residual variance on N - rank degrees of freedom), and a
    /// voxel whose regressor copies another column gets 0.
    #[test]
    fn observed_t_is_each_voxels_own_refit() {
        let (n, v) = (9usize, 5usize);
        let m = DMatrix::from_fn(n, 3, |i, k| match k {
            0 => 1.0,
            1 => (i % 3) as f64 - 1.0,
            _ => 0.0,
        });
        let ev: Vec<f32> =
            (0..n * v).map(|k| if k % v == 4 { 1.0 } else { ((k * 7919 % 13) as f32 - 6.0) * 0.25 }).collect();
        let y: Vec<f32> = (0..n * v).map(|k| ((k * 104729 % 17) as f32 - 8.0) * 0.1).collect();
        let evs = VoxelwiseEvs { columns: vec![2], values: vec![ev.clone()] };
        for w in [[0., 0., 1.], [0., 1., 0.]] {
            let c = Contrast { name: "tstat1".into(), kind: StatKind::T, c: DMatrix::from_column_slice(3, 1, &w) };
            let mut m0 = m.clone();
            m0.set_column(2, &DMatrix::from_fn(n, 1, |i, _| i as f64).column(0));
            let base = ContrastModel::new(&m0, &c).unwrap();
            let vp = voxelwise_problem(&m, &base, &c, &evs, &y, v, ConfoundMethod::FreedmanLane);
            let p = &vp.problem;
            assert_eq!(vp.rank_deficient, 1, "voxel 4's regressor is the intercept");
            let vq = p.voxel_qbasis.as_ref().unwrap();
            for x in 0..v {
                let ex: Vec<f32> = (0..n).map(|i| p.e[i * v + x]).collect();
                let u: Vec<f32> = (0..p.q)
                    .map(|k| (0..n).map(|i| vq[(x * n + i) * p.q + k] as f64 * ex[i] as f64).sum::<f64>() as f32)
                    .collect();
                let t = statistic(StatKind::T, &u, 1, p.ss[x], p.dof);
                let mv = evs.design_at(&m, v, x);
                let yv = DMatrix::from_fn(n, 1, |i, _| y[i * v + x] as f64);
                let expect = if x == 4 {
                    0.0
                } else {
                    let pinv = mv.clone().pseudo_inverse(1e-12).unwrap();
                    let beta = &pinv * &yv;
                    let r = &yv - &mv * &beta;
                    let sigma2 = r.norm_squared() / (n - 3) as f64;
                    let cv = DMatrix::from_column_slice(3, 1, &w);
                    let var = (cv.transpose() * &pinv * pinv.transpose() * &cv)[(0, 0)] * sigma2;
                    (cv.transpose() * beta)[(0, 0)] / var.sqrt()
                };
                // f32 storage of E, Q and the epilogue: 1e-4 relative on t of order 1.
                assert!((t as f64 - expect).abs() < 1e-4 * expect.abs().max(1.0), "{w:?} voxel {x}: {t} vs {expect}");
                // The observed fit is f64 throughout: 1e-10 relative leaves only rounding.
                let o = vp.observed.stat[x];
                assert!(
                    (o - expect).abs() < 1e-10 * expect.abs().max(1.0),
                    "{w:?} voxel {x}: observed {o} vs {expect}"
                );
            }
        }
    }
}
