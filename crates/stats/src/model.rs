//! GLM precomputation for one contrast, in the form the engines use (DESIGN.md).
//!
//! The design M (N x r; a rank-deficient one as in [`ContrastModel::new`]) is partitioned by the contrast C (r x s) into
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
    /// Effects of interest X = M pinv(M'M) C (N x s).
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

/// A design column that is a linear combination of the columns before it (0-based
/// indices): the rule that names a rank-deficient design's redundant columns.
///
/// Column j is redundant when adding it to columns 0..j does not raise their rank, all
/// ranks counted with one absolute tolerance, the whole design's [`rank_tol`]. With a fixed
/// tolerance the prefix ranks never fall and rise by at most one a column (singular values
/// interlace), so the columns kept are exactly rank(M) many, independent, and span M.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnDependency {
    /// The redundant column.
    pub column: usize,
    /// The kept columns before it that its combination uses (none: an all-zero column).
    pub of: Vec<usize>,
}

/// Singular values of `a` above the absolute tolerance `tol`.
fn rank_above(a: &DMatrix<f64>, tol: f64) -> usize {
    if a.ncols() == 0 || a.nrows() == 0 {
        return 0;
    }
    a.singular_values().iter().filter(|&&s| s > tol).count()
}

/// The design's redundant columns under the rule of [`ColumnDependency`], in column order;
/// empty for a full-rank design.
pub fn column_dependencies(m: &DMatrix<f64>) -> Vec<ColumnDependency> {
    let (n, r) = m.shape();
    if n == 0 || r == 0 || rank(m) == r {
        return Vec::new();
    }
    let tol = rank_tol(n, r, m.singular_values().max());
    let mut kept: Vec<usize> = Vec::new();
    let mut out = Vec::new();
    let mut prefix_rank = 0;
    for j in 0..r {
        let rk = rank_above(&m.columns(0, j + 1).into_owned(), tol);
        if rk > prefix_rank {
            prefix_rank = rk;
            kept.push(j);
            continue;
        }
        // Its combination of the kept columns (unique: they are independent); a column
        // whose share of m_j is below 1e-10 of |m_j| is rounding, not part of it.
        let basis = DMatrix::from_columns(&kept.iter().map(|&k| m.column(k)).collect::<Vec<_>>());
        let mj = m.column(j).into_owned();
        let norm = mj.norm();
        let of = if kept.is_empty() || norm == 0.0 {
            Vec::new()
        } else {
            let coef = pseudo_inverse(&basis) * &mj;
            kept.iter()
                .zip(coef.iter())
                .filter(|&(&k, &a)| (a * m.column(k).norm()).abs() > 1e-10 * norm)
                .map(|(&k, _)| k)
                .collect()
        };
        out.push(ColumnDependency { column: j, of });
    }
    out
}

/// The pseudo-inverse of `a` through its SVD, singular values at or below [`rank_tol`]
/// taken as zero: the same cut as [`rank`], so that rank and pseudo-inverse agree.
pub fn pseudo_inverse(a: &DMatrix<f64>) -> DMatrix<f64> {
    let (n, r) = a.shape();
    if n == 0 || r == 0 {
        return DMatrix::zeros(r, n);
    }
    let svd = a.clone().svd(true, true);
    let (u, vt) = (svd.u.unwrap(), svd.v_t.unwrap());
    let tol = rank_tol(n, r, svd.singular_values.max());
    let mut out = DMatrix::zeros(r, n);
    for (i, &s) in svd.singular_values.iter().enumerate() {
        if s > tol {
            out += (vt.row(i).transpose() / s) * u.column(i).transpose();
        }
    }
    out
}

/// Relative residual below which a contrast counts as estimable: |c - P c| <= this * |c|,
/// with P = pinv(M) M the projection on the row space of M. Weights typed with 7
/// significant digits (FSL writes design.con as %e) move an estimable contrast off the row
/// space by at most about 5e-7 of |c|, and P itself is exact to about 1e-13 for any
/// design whose rank the tolerance decides; a contrast that is not estimable is off by a
/// sizeable part of |c| (1/sqrt(3) for [1 0 0] on [1 g1 g2], g1 + g2 = 1).
pub const ESTIMABLE_TOL: f64 = 1e-5;

/// For each column of `c` (r x s, one column per contrast row), its residual off the row
/// space of `m` relative to its norm: |c_k - P c_k| / |c_k| (0 for a zero column).
pub fn estimability_residuals(m: &DMatrix<f64>, c: &DMatrix<f64>) -> Vec<f64> {
    let p = pseudo_inverse(m) * m;
    let off = c - &p * c;
    (0..c.ncols())
        .map(|k| {
            let norm = c.column(k).norm();
            if norm == 0.0 {
                0.0
            } else {
                off.column(k).norm() / norm
            }
        })
        .collect()
}

impl ContrastModel {
    /// Partition `m` by `contrast`. Errors (as plain messages; the caller names the file):
    /// a contrast that is not estimable, zero contrast, wrong contrast length, no degrees
    /// of freedom.
    ///
    /// A rank-deficient design is fitted through its independent columns (the redundant
    /// ones of [`column_dependencies`] left out) with the contrast's weights on them. For
    /// an estimable contrast that is the pseudo-inverse fit randomise and PALM make: with
    /// K the kept columns, M = M_K A (A's K columns the identity) and C' = C_K' A, so
    /// X = M pinv(M'M) C = M_K (M_K'M_K)^-1 C_K and span M null(C') = span M_K null(C_K'),
    /// with N - rank(M) degrees of freedom. The reduced fit gives a rank-deficient design
    /// exactly the numbers of the full-rank design without its redundant columns.
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
        if n <= rk {
            return Err(format!("the design has {r} columns but only {n} rows: no degrees of freedom left"));
        }
        if rk < r {
            if let Some(k) = estimability_residuals(m, c).iter().position(|&e| e > ESTIMABLE_TOL) {
                let which = if c.ncols() > 1 { format!(" (its row {})", k + 1) } else { String::new() };
                return Err(format!(
                    "contrast {}{which} is not estimable: the design has rank {rk} with {r} columns, and its \
                     weights are not a combination of the design's rows",
                    contrast.name
                ));
            }
            let dropped: Vec<usize> = column_dependencies(m).iter().map(|d| d.column).collect();
            let kept: Vec<usize> = (0..r).filter(|k| !dropped.contains(k)).collect();
            let mk = DMatrix::from_columns(&kept.iter().map(|&k| m.column(k)).collect::<Vec<_>>());
            let ck = DMatrix::from_fn(kept.len(), c.ncols(), |i, j| c[(kept[i], j)]);
            if rank(&mk) < kept.len() {
                return Err(format!(
                    "the design's rank ({rk} of {r} columns) is numerically ambiguous: some columns are nearly \
                     linear combinations of others"
                ));
            }
            return ContrastModel::new(&mk, &Contrast { name: contrast.name.clone(), kind: contrast.kind, c: ck });
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
                // A voxel constant across images (randomise's test: every image equal to the
                // first) carries no evidence: E = 0 and ||E||^2 = 0 exactly, so every engine's
                // statistic is 0 there (randomise: t = 0 where the variance is exactly 0),
                // instead of the rounding residue of R_Z Y.
                let first = &y[v0..v0 + w];
                for x in 0..w {
                    if (1..n).all(|i| y[i * v + v0 + x] == first[x]) {
                        ssb[x] = 0.0;
                        (0..n).for_each(|i| eb[i * w + x] = 0.0);
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

    fn t_contrast(w: &[f64]) -> Contrast {
        Contrast { name: "tstat1".into(), kind: StatKind::T, c: DMatrix::from_column_slice(w.len(), 1, w) }
    }

    /// Two groups (3 and 4 rows), a covariate, and the intercept g1 + g2 as a third column.
    fn redundant_design() -> DMatrix<f64> {
        let age = [0.3, -1.2, 0.5, 2.0, 0.1, -0.7, 0.9];
        DMatrix::from_fn(7, 4, |i, k| {
            let g = (i >= 3) as u8 as f64;
            [1.0 - g, g, 1.0, age[i]][k]
        })
    }

    /// The rule: a column in the span of the columns before it is the redundant one, with
    /// the kept columns its combination uses.
    #[test]
    fn redundant_columns_are_those_spanned_by_the_columns_before_them() {
        let m = redundant_design();
        assert_eq!(column_dependencies(&m), vec![ColumnDependency { column: 2, of: vec![0, 1] }]);
        // The intercept first: then the second group's indicator is the redundant one.
        let perm = DMatrix::from_columns(&[m.column(2), m.column(0), m.column(1), m.column(3)]);
        assert_eq!(column_dependencies(&perm), vec![ColumnDependency { column: 2, of: vec![0, 1] }]);
        // A multiple of one column and an all-zero column, both named.
        let extra = DMatrix::from_columns(&[
            m.column(0).into_owned(),
            m.column(3).into_owned(),
            m.column(3) * -2.5,
            m.column(1) * 0.0,
        ]);
        assert_eq!(
            column_dependencies(&extra),
            vec![ColumnDependency { column: 2, of: vec![1] }, ColumnDependency { column: 3, of: vec![] }]
        );
        assert!(column_dependencies(&DMatrix::from_columns(&[m.column(0), m.column(1)])).is_empty());
    }

    /// An estimable contrast on a rank-deficient design gives the partition of the reduced
    /// design (redundant column dropped, its weight dropped) bit for bit, and the
    /// statistic randomise's pseudo-inverse formula gives, t = c pinv(M) y /
    /// sqrt(c pinv(M) pinv(M)' c' RSS / (N - rank M)), computed here with nalgebra's own
    /// pseudo-inverse.
    #[test]
    fn estimable_contrast_on_a_rank_deficient_design_is_the_reduced_fit() {
        let m = redundant_design();
        let reduced = DMatrix::from_columns(&[m.column(0), m.column(1), m.column(3)]);
        // g1 - g2, the covariate, and g1's mean (weight on the intercept: [1 0 1 0] = g1 + 1).
        for (full, red) in [
            (vec![1.0, -1.0, 0.0, 0.0], vec![1.0, -1.0, 0.0]),
            (vec![0.0, 0.0, 0.0, 1.0], vec![0.0, 0.0, 1.0]),
            (vec![1.0, 0.0, 1.0, 0.0], vec![1.0, 0.0, 0.0]),
        ] {
            let a = ContrastModel::new(&m, &t_contrast(&full)).unwrap();
            let b = ContrastModel::new(&reduced, &t_contrast(&red)).unwrap();
            assert_eq!((a.q, a.s, a.dof), (3, 1, 4.0), "{full:?}");
            assert_eq!((&a.qbasis, &a.z_basis, &a.x), (&b.qbasis, &b.z_basis, &b.x), "{full:?}");
            let y: Vec<f32> = (0..7).map(|i| ((i * 5 % 7) as f32 - 3.0) * 0.4 + (i >= 3) as u8 as f32).collect();
            let p = a.problem(&y, 1);
            let u: Vec<f32> = (0..p.q).map(|k| (0..7).map(|i| p.qbasis[i * p.q + k] * p.e[i]).sum()).collect();
            let t = crate::statistic(StatKind::T, &u, 1, p.ss[0], p.dof);
            let pinv = m.clone().pseudo_inverse(1e-10).unwrap();
            let yv = DVector::from_iterator(7, y.iter().map(|&v| v as f64));
            let c = DVector::from_column_slice(&full);
            let beta = &pinv * &yv;
            let rss = (&yv - &m * &beta).norm_squared();
            let scale = (c.transpose() * &pinv * pinv.transpose() * &c)[(0, 0)];
            let oracle = c.dot(&beta) / (scale * rss / 4.0).sqrt();
            // f32 data and basis against f64: 1e-5 relative.
            assert!((t as f64 - oracle).abs() < 1e-5 * oracle.abs().max(1.0), "{full:?}: t {t} vs {oracle}");
        }
    }

    /// An F contrast on a rank-deficient design: the reduced design's partition, bit for bit.
    #[test]
    fn f_contrast_on_a_rank_deficient_design_is_the_reduced_fit() {
        let m = redundant_design();
        let reduced = DMatrix::from_columns(&[m.column(0), m.column(1), m.column(3)]);
        let f = |c: DMatrix<f64>| Contrast { name: "fstat1".into(), kind: StatKind::F, c };
        let a =
            ContrastModel::new(&m, &f(DMatrix::from_column_slice(4, 2, &[1., -1., 0., 0., 0., 0., 0., 1.]))).unwrap();
        let b = ContrastModel::new(&reduced, &f(DMatrix::from_column_slice(3, 2, &[1., -1., 0., 0., 0., 1.]))).unwrap();
        assert_eq!((a.q, a.s, a.dof), (3, 2, 4.0));
        assert_eq!((&a.qbasis, &a.z_basis), (&b.qbasis, &b.z_basis));
    }

    /// A contrast off the design's row space is refused, by name; so is one row of an F.
    #[test]
    fn non_estimable_contrasts_are_refused() {
        let m = redundant_design();
        // The intercept alone, or g1 alone: their weights do not follow column 3 = 1 + 2.
        for w in [[0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]] {
            let e = ContrastModel::new(&m, &t_contrast(&w)).unwrap_err();
            assert!(e.contains("contrast tstat1 is not estimable") && e.contains("rank 3 with 4 columns"), "{e}");
            assert!(estimability_residuals(&m, &DMatrix::from_column_slice(4, 1, &w))[0] > 0.1, "{w:?}");
        }
        let c = DMatrix::from_column_slice(4, 2, &[1., -1., 0., 0., 1., 0., 0., 0.]);
        let e = ContrastModel::new(&m, &Contrast { name: "fstat1".into(), kind: StatKind::F, c }).unwrap_err();
        assert!(e.contains("fstat1 (its row 2) is not estimable"), "{e}");
        // Weights typed to 7 significant digits, 1/3 and 2/3 as below, are 1e-7 off the
        // row space (c1 + c2 = c3 is the condition) and stay estimable.
        let w = [0.3333333, 0.3333333, 0.6666667, 0.0];
        assert!(ContrastModel::new(&m, &t_contrast(&w)).is_ok());
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
