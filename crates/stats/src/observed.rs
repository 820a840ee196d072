//! The observed statistic map in f64, rounded to f32 once at the end.
//!
//! randomise computes the unpermuted statistic in double precision and stores it as a float
//! volume, which its TFCE then reads; the engines compute every permutation's statistic in
//! f32 (a product of f32 residuals, folded sums). A voxel whose t lies within the f32
//! computation's error (about 1e-7 relative) of a TFCE level h_k gains or loses that level's
//! term against randomise, and an exceedance count can differ at a near tie. So the observed
//! map is computed here from the data in f64, per voxel, in the same model the engines
//! permute: E = Y minus its projection on the method's removed basis, u = B'E on the method's
//! basis B, the residual r = E - B u summed directly (no cancellation), and
//! t = u_1 / sqrt(|r|^2 / dof), F = (|u_1..s|^2 / s) / (|r|^2 / dof). The permutation maps
//! stay f32 on the engines; the identity's member of every null comes from this map on the
//! host (see the engines' scheduler), so it counts itself exactly.
//!
//! Under ter Braak (-U 3) the permutations' identity (R_M Y on M) gives 0 everywhere; the
//! observed map is the unpermuted data's, as for every other method ([`crate::confound`]).
use crate::confound::ConfoundMethod;
use crate::model::ContrastModel;
use crate::problem::StatKind;
use crate::smoothing::VarianceSmoothing;
use nalgebra::DMatrix;
use rayon::prelude::*;

/// The unpermuted fit of a contrast at every voxel, in f64.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObservedFit {
    /// t or F per in-mask voxel (0 where the voxel has no residual variance or is constant).
    pub stat: Vec<f64>,
    /// The residual variance |r|^2 / dof per voxel (the variance `-v` smooths).
    pub sigma2: Vec<f64>,
}

impl ObservedFit {
    /// The observed map: the statistic, or for a smoothed t contrast the pseudo-t
    /// (randomise `-v`, F contrasts are not smoothed), rounded to f32.
    pub fn map(&self, kind: StatKind, smoothing: Option<&VarianceSmoothing>) -> Vec<f32> {
        match (kind, smoothing) {
            (StatKind::T, Some(s)) => s.pseudo_t_f64(&self.stat, &self.sigma2).into_iter().map(|x| x as f32).collect(),
            _ => self.stat.iter().map(|&x| x as f32).collect(),
        }
    }
}

/// The residual variance below which a fit is taken as perfect: |r|^2 <= 1e-12 ||E||^2 is f64
/// rounding of a combination of the basis, and bounds the statistic (|t| <= 1e6 sqrt(dof))
/// instead of dividing by zero.
const RSS_FLOOR: f64 = 1e-12;

impl ContrastModel {
    /// The unpermuted fit of data `y` (N x V, row-major f32) under `method` in f64.
    pub fn observed_fit(&self, y: &[f32], v: usize, method: ConfoundMethod) -> ObservedFit {
        let n = self.n;
        assert_eq!(y.len(), n * v, "data of N x V values");
        let none = DMatrix::zeros(n, 0);
        let removed = match method {
            ConfoundMethod::Kennedy | ConfoundMethod::FreedmanLane | ConfoundMethod::TerBraak => &self.z_basis,
            ConfoundMethod::Manly => &none,
        };
        let cols = if method == ConfoundMethod::Kennedy { self.s } else { self.q };
        let dof = if method == ConfoundMethod::TerBraak { self.dof } else { method.dof(self) };
        let rm: Vec<f64> = (0..n).flat_map(|i| (0..removed.ncols()).map(move |k| removed[(i, k)])).collect();
        let basis: Vec<f64> = (0..n).flat_map(|i| (0..cols).map(move |k| self.qbasis[(i, k)])).collect();
        let fit =
            VoxelFitter { n, rm: &rm, r: removed.ncols(), basis: &basis, q: cols, s: self.s, kind: self.kind, dof };
        let per_voxel: Vec<(f64, f64)> = (0..v)
            .into_par_iter()
            .with_min_len(256)
            .map_init(
                || vec![0f64; n],
                |col, x| {
                    for (i, c) in col.iter_mut().enumerate() {
                        *c = y[i * v + x] as f64;
                    }
                    fit.fit(col)
                },
            )
            .collect();
        let (stat, sigma2) = per_voxel.into_iter().unzip();
        ObservedFit { stat, sigma2 }
    }
}

/// One voxel's unpermuted fit: the removed basis (n x r) and the regression basis (n x q,
/// its first s columns the effect), both row-major and orthonormal.
struct VoxelFitter<'a> {
    n: usize,
    rm: &'a [f64],
    r: usize,
    basis: &'a [f64],
    q: usize,
    s: usize,
    kind: StatKind,
    dof: f64,
}

impl VoxelFitter<'_> {
    /// (statistic, sigma^2) of one voxel's values `e` (overwritten with its residuals).
    fn fit(&self, e: &mut [f64]) -> (f64, f64) {
        let n = self.n;
        // A voxel constant across images carries no evidence (randomise: t = 0 where every
        // image equals the first), whatever the rounding residue of its projections.
        if e.iter().all(|&x| x == e[0]) {
            return (0.0, 0.0);
        }
        let mut coef = [0f64; 64];
        let mut coef_v = Vec::new();
        let width = self.r.max(self.q);
        let c: &mut [f64] = if width <= coef.len() {
            &mut coef[..width]
        } else {
            coef_v.resize(width, 0.0);
            &mut coef_v
        };
        project_out(e, self.rm, self.r, n, c);
        let ss: f64 = e.iter().map(|x| x * x).sum();
        let u = &mut c[..self.q];
        u.iter_mut().for_each(|x| *x = 0.0);
        for (i, &ei) in e.iter().enumerate() {
            for (k, uk) in u.iter_mut().enumerate() {
                *uk += self.basis[i * self.q + k] * ei;
            }
        }
        let mut rss = 0f64;
        for (i, &ei) in e.iter().enumerate() {
            let fit: f64 = (0..self.q).map(|k| self.basis[i * self.q + k] * u[k]).sum();
            rss += (ei - fit) * (ei - fit);
        }
        if ss.is_nan() || ss <= 0.0 {
            return (0.0, 0.0);
        }
        let rss = rss.max(RSS_FLOOR * ss);
        let sigma2 = rss / self.dof;
        let stat = match self.kind {
            StatKind::T => u[0] / sigma2.sqrt(),
            StatKind::F => u[..self.s].iter().map(|x| x * x).sum::<f64>() / self.s as f64 / sigma2,
        };
        (stat, sigma2)
    }
}

/// `e` minus its projection on the orthonormal columns of `rm` (n x r, row-major); `coef`
/// (at least r long) is scratch.
fn project_out(e: &mut [f64], rm: &[f64], r: usize, n: usize, coef: &mut [f64]) {
    if r == 0 {
        return;
    }
    let coef = &mut coef[..r];
    coef.iter_mut().for_each(|c| *c = 0.0);
    for i in 0..n {
        for (k, c) in coef.iter_mut().enumerate() {
            *c += rm[i * r + k] * e[i];
        }
    }
    for i in 0..n {
        let fit: f64 = (0..r).map(|k| rm[i * r + k] * coef[k]).sum();
        e[i] -= fit;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::design::Contrast;

    /// t and F of each method against an explicit refit in f64 (pseudo-inverse, residual
    /// variance on the method's degrees of freedom), and 0 at a constant voxel.
    #[test]
    fn observed_fit_is_the_explicit_refit() {
        let (n, v) = (11usize, 4usize);
        let m = DMatrix::from_fn(n, 3, |i, k| match k {
            0 => 1.0,
            1 => (i % 2) as f64,
            _ => (i as f64 * 0.9).cos(),
        });
        let mut y: Vec<f32> = (0..n * v).map(|k| ((k * 7919 % 23) as f32 - 11.0) * 0.17).collect();
        for i in 0..n {
            y[i * v + 3] = 2.5;
        }
        let ym = DMatrix::from_fn(n, v, |i, x| y[i * v + x] as f64);
        let z = DMatrix::from_columns(&[m.column(0), m.column(2)]);
        let ct = Contrast { name: "t".into(), kind: StatKind::T, c: DMatrix::from_column_slice(3, 1, &[0., 1., 0.]) };
        let cf = Contrast {
            name: "f".into(),
            kind: StatKind::F,
            c: DMatrix::from_row_slice(3, 2, &[0., 0., 1., 0., 0., 1.]),
        };
        for method in [ConfoundMethod::Kennedy, ConfoundMethod::FreedmanLane, ConfoundMethod::Manly] {
            for c in [&ct, &cf] {
                if method == ConfoundMethod::Kennedy && c.kind == StatKind::F {
                    continue;
                }
                let model = ContrastModel::new(&m, c).unwrap();
                let fit = model.observed_fit(&y, v, method);
                for x in 0..v {
                    let yv = ym.column(x).into_owned();
                    let expect = if x == 3 { 0.0 } else { refit(&m, &z, &c.c, &yv, method) };
                    // f64 throughout: agreement to 1e-10 relative leaves only rounding.
                    let got = fit.stat[x];
                    assert!(
                        (got - expect).abs() <= 1e-10 * expect.abs().max(1.0),
                        "{method:?} {} voxel {x}: {got} vs {expect}",
                        c.name
                    );
                }
            }
        }
        // ter Braak's observed map is the unpermuted data's, Freedman–Lane's.
        let model = ContrastModel::new(&m, &ct).unwrap();
        assert_eq!(
            model.observed_fit(&y, v, ConfoundMethod::TerBraak),
            model.observed_fit(&y, v, ConfoundMethod::FreedmanLane)
        );
    }

    /// The statistic of contrast `c` by an explicit fit: Freedman–Lane and Manly as the GLM
    /// t / F of Y on M; Kennedy as R_Z Y on R_Z X alone with N - rank(C) degrees of freedom.
    fn refit(
        m: &DMatrix<f64>,
        z: &DMatrix<f64>,
        c: &DMatrix<f64>,
        y: &nalgebra::DVector<f64>,
        method: ConfoundMethod,
    ) -> f64 {
        let n = m.nrows() as f64;
        if method == ConfoundMethod::Kennedy {
            let rz = |a: &DMatrix<f64>| a - z * (z.clone().pseudo_inverse(1e-12).unwrap() * a);
            let x = rz(&(m * (m.transpose() * m).try_inverse().unwrap() * c));
            let ey = rz(&DMatrix::from_column_slice(y.len(), 1, y.as_slice()));
            let beta = (x.transpose() * &x).try_inverse().unwrap() * x.transpose() * &ey;
            let r = &ey - &x * &beta;
            let s2 = r.norm_squared() / (n - 1.0);
            return beta[(0, 0)] / (s2 * (x.transpose() * &x).try_inverse().unwrap()[(0, 0)]).sqrt();
        }
        let pinv = m.clone().pseudo_inverse(1e-12).unwrap();
        let beta = &pinv * y;
        let r = y - m * &beta;
        let s2 = r.norm_squared() / (n - 3.0);
        let xtx_inv = (m.transpose() * m).try_inverse().unwrap();
        let cope = c.transpose() * &beta;
        let vc = c.transpose() * &xtx_inv * c;
        if c.ncols() == 1 {
            cope[0] / (s2 * vc[(0, 0)]).sqrt()
        } else {
            (cope.transpose() * vc.try_inverse().unwrap() * &cope)[(0, 0)] / c.ncols() as f64 / s2
        }
    }

    /// The f64 map rounds to the f32 of the same value, and a smoothed t map is the pseudo-t
    /// of the f64 fit: t sqrt(sigma^2 / smoothed sigma^2).
    #[test]
    fn map_rounds_once_and_smooths_t_only() {
        let fit = ObservedFit { stat: vec![1.0 + 1e-9, -2.0, 3.0], sigma2: vec![1.0, 4.0, 2.0] };
        assert_eq!(fit.map(StatKind::T, None), vec![1.0f32, -2.0, 3.0]);
        let s = VarianceSmoothing::new([3, 1, 1], &[0, 1, 2], [1.0; 3], 1.0).unwrap();
        let sm = s.smooth(&fit.sigma2);
        let t = fit.map(StatKind::T, Some(&s));
        for x in 0..3 {
            let expect = fit.stat[x] * (fit.sigma2[x] / sm[x]).sqrt();
            assert_eq!(t[x], expect as f32);
        }
        assert_eq!(fit.map(StatKind::F, Some(&s)), vec![1.0f32, -2.0, 3.0]);
    }
}
