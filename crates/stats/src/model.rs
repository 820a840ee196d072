//! GLM precomputation for one contrast, in the form the engines use (DESIGN.md).
//!
//! The design M (N x r, full column rank) is partitioned by the contrast C (r x s) into
//! effects of interest X and nuisance Z as randomise and PALM do (Beckmann partitioning,
//! Winkler et al. 2014, App. A). Two facts make that partition cheap to build here:
//! - span(Z) = { M b : C'b = 0 } = M null(C'), and
//! - X = M (M'M)^{-1} C is already orthogonal to Z (X'Mb = C'b = 0), so R_Z X = X.
//!
//! Q = [Q1 Q2] is an orthonormal basis of span(M): Q1 (N x s) spans X, Q2 spans Z. For a
//! t contrast Q1 = X / |X|, so u_1 = q1'Y has the sign of C'beta-hat. Freedman-Lane uses
//! E = R_Z Y = Y - Q2 Q2' Y; the statistic of permutation j depends on P_j E alone.
use crate::design::Contrast;
use crate::problem::{ContrastProblem, StatKind};
use nalgebra::{DMatrix, DVector, SymmetricEigen};
use rayon::prelude::*;

/// The partitioned model of one contrast.
#[derive(Clone, Debug)]
pub struct ContrastModel {
    pub n: usize,
    /// Rank of the design (columns of Q).
    pub q: usize,
    /// Rank of the contrast.
    pub s: usize,
    pub kind: StatKind,
    /// N - rank(M).
    pub dof: f64,
    /// N x q orthonormal; first s columns span the effect of interest.
    pub qbasis: DMatrix<f64>,
    /// Effects of interest X = M (M'M)^{-1} C (N x s).
    pub x: DMatrix<f64>,
    /// Orthonormal basis of the nuisance space (N x (q - s)); may have no columns.
    pub z_basis: DMatrix<f64>,
}

/// Numerical rank tolerance as MATLAB's rank(): max(size) * eps * largest singular value.
fn rank_tol(rows: usize, cols: usize, smax: f64) -> f64 {
    rows.max(cols) as f64 * f64::EPSILON * smax * 16.0
}

/// Orthonormal basis of the column space of `a` (thin SVD, singular values above tolerance).
pub fn column_basis(a: &DMatrix<f64>) -> DMatrix<f64> {
    if a.ncols() == 0 || a.nrows() == 0 {
        return DMatrix::zeros(a.nrows(), 0);
    }
    let svd = a.clone().svd(true, false);
    let u = svd.u.unwrap();
    let smax = svd.singular_values.max();
    let tol = rank_tol(a.nrows(), a.ncols(), smax);
    let keep: Vec<usize> = (0..svd.singular_values.len()).filter(|&i| svd.singular_values[i] > tol).collect();
    let mut out = DMatrix::zeros(a.nrows(), keep.len());
    for (o, &i) in keep.iter().enumerate() {
        out.set_column(o, &u.column(i));
    }
    out
}

/// Numerical rank of a matrix.
pub fn rank(a: &DMatrix<f64>) -> usize {
    column_basis(a).ncols()
}

/// Orthonormal basis of null(C') = the orthogonal complement of col(C) in R^r.
fn null_of_transpose(c: &DMatrix<f64>) -> DMatrix<f64> {
    let r = c.nrows();
    let cb = column_basis(c);
    let proj = DMatrix::<f64>::identity(r, r) - &cb * cb.transpose();
    let eig = SymmetricEigen::new(proj);
    let keep: Vec<usize> = (0..r).filter(|&i| eig.eigenvalues[i] > 0.5).collect();
    let mut out = DMatrix::zeros(r, keep.len());
    for (o, &i) in keep.iter().enumerate() {
        out.set_column(o, &eig.eigenvectors.column(i));
    }
    out
}

impl ContrastModel {
    /// Partition `m` by `contrast`. Errors (as plain messages; the caller names the file):
    /// rank-deficient design, zero contrast, wrong contrast length.
    pub fn new(m: &DMatrix<f64>, contrast: &Contrast) -> Result<ContrastModel, String> {
        let (n, r) = m.shape();
        let c = &contrast.c;
        if c.nrows() != r {
            return Err(format!(
                "contrast {} has {} weights but the design has {} columns",
                contrast.name,
                c.nrows(),
                r
            ));
        }
        let rk = rank(m);
        if rk < r {
            return Err(format!(
                "the design is rank deficient (rank {rk} with {r} columns): some columns are linear combinations of others"
            ));
        }
        if n <= rk {
            return Err(format!("the design has {r} columns but only {n} rows: no degrees of freedom left"));
        }
        // Reduce the contrast to a basis of its column space (an F contrast with dependent
        // rows tests the same hypothesis as its independent part, as PALM does).
        let cb = column_basis(c);
        let s = cb.ncols();
        if s == 0 {
            return Err(format!("contrast {} is all zeros: nothing to test", contrast.name));
        }
        if contrast.kind == StatKind::T && s != 1 {
            return Err(format!("t contrast {} must be a single row", contrast.name));
        }
        let mtm = m.transpose() * m;
        let mtm_inv = mtm.try_inverse().ok_or("the design's cross-product matrix is singular")?;
        // For a t contrast keep the user's direction (and scale, irrelevant) of c.
        let c_used = if contrast.kind == StatKind::T { c.clone() } else { cb.clone() };
        let x = m * &mtm_inv * &c_used;
        let z = m * null_of_transpose(c);
        let z_basis = column_basis(&z);
        let q1 = if contrast.kind == StatKind::T {
            let norm = x.column(0).norm();
            if norm == 0.0 {
                return Err(format!("contrast {} is not estimable", contrast.name));
            }
            DMatrix::from_column_slice(n, 1, (x.column(0) / norm).as_slice())
        } else {
            column_basis(&x)
        };
        let q = q1.ncols() + z_basis.ncols();
        let mut qbasis = DMatrix::zeros(n, q);
        for k in 0..q1.ncols() {
            qbasis.set_column(k, &q1.column(k));
        }
        for k in 0..z_basis.ncols() {
            qbasis.set_column(q1.ncols() + k, &z_basis.column(k));
        }
        Ok(ContrastModel { n, q, s, kind: contrast.kind, dof: (n - rk) as f64, qbasis, x, z_basis })
    }

    /// Whether the effect tested includes the constant: the column of ones lies in the
    /// design's space but not in the nuisance space. Row permutations leave the constant
    /// where it is, so they cannot build a null for such an effect (for a mean tested with
    /// demeaned covariates every permutation gives the observed statistic); sign flips can.
    pub fn tests_constant(&self) -> bool {
        let ones = DVector::from_element(self.n, 1.0);
        // Residual of 1 after projecting on an orthonormal basis, relative to |1| = sqrt(n).
        let off = |basis: &DMatrix<f64>| -> f64 {
            if basis.ncols() == 0 {
                return 1.0;
            }
            let proj = basis * (basis.transpose() * &ones);
            (&ones - proj).norm() / (self.n as f64).sqrt()
        };
        off(&self.qbasis) < 1e-8 && off(&self.z_basis) > 1e-8
    }

    /// The engine's problem for data `y` (N x V, row-major f32) under Freedman–Lane:
    /// E = R_Z Y and ||E_v||^2, computed in f64 and stored as f32 (other confound methods:
    /// [`ContrastModel::problem_for`]).
    pub fn problem(&self, y: &[f32], v: usize) -> ContrastProblem {
        self.residual_problem(y, v, &self.z_basis)
    }

    /// The problem with E = Y minus its projection on the orthonormal columns of `removed`
    /// (the nuisance basis, none, or Q), on the whole basis Q with N - rank(M) degrees of
    /// freedom.
    pub(crate) fn residual_problem(&self, y: &[f32], v: usize, removed: &DMatrix<f64>) -> ContrastProblem {
        let n = self.n;
        assert_eq!(y.len(), n * v);
        let rz = removed.ncols();
        let mut e = vec![0f32; n * v];
        let mut ss = vec![0f32; v];
        // Voxel blocks in parallel; within a block, rows are contiguous so loops vectorize.
        const BLK: usize = 1024;
        let zb = removed;
        let results: Vec<(usize, Vec<f32>, Vec<f32>)> = (0..v.div_ceil(BLK))
            .into_par_iter()
            .map(|b| {
                let v0 = b * BLK;
                let w = BLK.min(v - v0);
                let mut coef = vec![0f64; rz * w];
                for i in 0..n {
                    let row = &y[i * v + v0..i * v + v0 + w];
                    for k in 0..rz {
                        let zik = zb[(i, k)];
                        let cr = &mut coef[k * w..(k + 1) * w];
                        for (c, &yv) in cr.iter_mut().zip(row) {
                            *c += zik * yv as f64;
                        }
                    }
                }
                let mut eb = vec![0f32; n * w];
                let mut ssb = vec![0f64; w];
                let mut fit = vec![0f64; w];
                for i in 0..n {
                    fit.iter_mut().for_each(|f| *f = 0.0);
                    for k in 0..rz {
                        let zik = zb[(i, k)];
                        for (f, &c) in fit.iter_mut().zip(&coef[k * w..(k + 1) * w]) {
                            *f += zik * c;
                        }
                    }
                    let row = &y[i * v + v0..i * v + v0 + w];
                    for x in 0..w {
                        let r = row[x] as f64 - fit[x];
                        eb[i * w + x] = r as f32;
                        ssb[x] += r * r;
                    }
                }
                (b, eb, ssb.into_iter().map(|s| s as f32).collect())
            })
            .collect();
        for (b, eb, ssb) in results {
            let v0 = b * BLK;
            let w = ssb.len();
            for i in 0..n {
                e[i * v + v0..i * v + v0 + w].copy_from_slice(&eb[i * w..(i + 1) * w]);
            }
            ss[v0..v0 + w].copy_from_slice(&ssb);
        }
        let qbasis: Vec<f32> =
            (0..n).flat_map(|i| (0..self.q).map(move |k| (i, k))).map(|(i, k)| self.qbasis[(i, k)] as f32).collect();
        ContrastProblem {
            n,
            v,
            q: self.q,
            s: self.s,
            kind: self.kind,
            dof: self.dof as f32,
            qbasis,
            e,
            ss,
            voxel_qbasis: None,
        }
    }
}

/// Labels of identical design rows (rows that may be exchanged without changing anything):
/// rows of `m` equal within 1e-8 relative get the same label, in order of first appearance.
pub fn identical_row_labels(m: &DMatrix<f64>) -> Vec<u32> {
    let n = m.nrows();
    let scale = m.amax().max(1e-300);
    let mut reps: Vec<usize> = Vec::new();
    let mut labels = vec![0u32; n];
    for i in 0..n {
        let found = reps.iter().position(|&r| (0..m.ncols()).all(|k| (m[(i, k)] - m[(r, k)]).abs() <= 1e-8 * scale));
        labels[i] = match found {
            Some(p) => p as u32,
            None => {
                reps.push(i);
                (reps.len() - 1) as u32
            }
        };
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_spans_design_and_orders_effect_first() {
        let m = DMatrix::from_row_slice(
            6,
            3,
            &[1., 0., 0.3, 1., 0., -1.2, 1., 1., 0.5, 1., 1., 2.0, 1., 0., 0.1, 1., 1., -0.7],
        );
        let c =
            Contrast { name: "tstat1".into(), kind: StatKind::T, c: DMatrix::from_column_slice(3, 1, &[0., 1., 0.]) };
        let cm = ContrastModel::new(&m, &c).unwrap();
        assert_eq!((cm.q, cm.s), (3, 1));
        let qtq = cm.qbasis.transpose() * &cm.qbasis;
        assert!((qtq - DMatrix::<f64>::identity(3, 3)).amax() < 1e-12);
        // Q spans M: projecting M on Q leaves nothing.
        let resid = &m - &cm.qbasis * (cm.qbasis.transpose() * &m);
        assert!(resid.amax() < 1e-12);
        // q1 is orthogonal to the nuisance columns 0 and 2.
        let z = DMatrix::from_columns(&[m.column(0), m.column(2)]);
        assert!((cm.qbasis.column(0).transpose() * z).amax() < 1e-12);
    }

    #[test]
    fn rank_deficient_design_is_rejected() {
        let m = DMatrix::from_row_slice(4, 3, &[1., 0., 1., 1., 0., 1., 1., 1., 0., 1., 1., 0.]);
        let c =
            Contrast { name: "tstat1".into(), kind: StatKind::T, c: DMatrix::from_column_slice(3, 1, &[0., 1., 0.]) };
        let e = ContrastModel::new(&m, &c).unwrap_err();
        assert!(e.contains("rank deficient"), "{e}");
    }

    #[test]
    fn contrasts_that_test_the_constant_are_recognised() {
        let n = 8;
        let age = [31.0, 45.0, 28.0, 52.0, 39.0, 60.0, 24.0, 41.0];
        let mean_age = age.iter().sum::<f64>() / n as f64;
        let design = |cols: &[&dyn Fn(usize) -> f64]| DMatrix::from_fn(n, cols.len(), |i, k| cols[k](i));
        let one = |_: usize| 1.0;
        let raw = |i: usize| age[i];
        let dm = |i: usize| age[i] - mean_age;
        let ga = |i: usize| (i < 4) as u8 as f64;
        let gb = |i: usize| (i >= 4) as u8 as f64;
        let tests = |m: &DMatrix<f64>, rows: &[&[f64]]| {
            let r = m.ncols();
            let kind = if rows.len() == 1 { StatKind::T } else { StatKind::F };
            let c = Contrast { name: "c".into(), kind, c: DMatrix::from_fn(r, rows.len(), |i, j| rows[j][i]) };
            ContrastModel::new(m, &c).unwrap().tests_constant()
        };
        // The mean, with a demeaned or a raw covariate: sign flips.
        assert!(tests(&design(&[&one, &dm]), &[&[1., 0.]]));
        assert!(tests(&design(&[&one, &raw]), &[&[1., 0.]]));
        // The covariate's slope, a group difference: permutations.
        assert!(!tests(&design(&[&one, &dm]), &[&[0., 1.]]));
        assert!(!tests(&design(&[&ga, &gb]), &[&[1., -1.]]));
        // One group's mean, both means at once (F): the constant is tested.
        assert!(tests(&design(&[&ga, &gb]), &[&[1., 0.]]));
        assert!(tests(&design(&[&ga, &gb]), &[&[1., 0.], &[0., 1.]]));
        // No constant in the design at all: nothing to flip for.
        assert!(!tests(&design(&[&raw]), &[&[1.]]));
    }
}
