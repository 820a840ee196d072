//! What an engine needs for one contrast, and the one statistic formula every engine, port
//! and shader computes (DESIGN.md, "The GLM and Freedman–Lane, in the form the kernels use").
//!
//! For permutation j and voxel v the engine projects the permuted residuals on the basis,
//! u = Q' P_j E[:, v] (a q-vector), and the statistic needs only |u|^2, u_1 (t) or
//! |u_1..s|^2 (F), and ||E[:, v]||^2. The WGSL twin of [`statistic_of_sums`] is
//! `statistic4` in the shaders crate's `shared/statistic.wgsl`, in the same arithmetic form.

/// Which statistic the epilogue computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StatKind {
    /// t = u_1 / sqrt(RSS / dof)   (s = 1)
    T,
    /// F = (|u_1..s|^2 / s) / (RSS / dof)
    F,
}

/// Everything an engine needs for one contrast; built by [`crate::ContrastModel::problem`].
#[derive(Clone, Debug)]
pub struct ContrastProblem {
    /// Rows (images).
    pub n: usize,
    /// In-mask voxels.
    pub v: usize,
    /// Columns of the orthonormal basis Q (= rank of the design).
    pub q: usize,
    /// Rank of the contrast (1 for t).
    pub s: usize,
    pub kind: StatKind,
    /// Residual degrees of freedom, N - rank(M).
    pub dof: f32,
    /// Q: n x q, row-major (`qbasis[i * q + k]`); its first s columns span R_Z X.
    pub qbasis: Vec<f32>,
    /// E = R_Z Y: n x v, row-major (`e[i * v + vox]`).
    pub e: Vec<f32>,
    /// ||E[:, v]||^2 per voxel (computed in f64, stored as f32).
    pub ss: Vec<f32>,
    /// Voxelwise regressors (randomise --vxl): each voxel's own basis Q_v, v blocks of n x q
    /// row-major (`voxel_qbasis[(vox * n + i) * q + k]`), which replace `qbasis` (built by
    /// [`crate::voxelwise_problem`]). None: every voxel shares `qbasis`.
    pub voxel_qbasis: Option<Vec<f32>>,
}

impl ContrastProblem {
    /// Whether each voxel has its own basis (voxelwise regressors).
    pub fn is_voxelwise(&self) -> bool {
        self.voxel_qbasis.is_some()
    }

    /// Flops of the product for one permutation: 2 q n v (q n v multiply-adds).
    pub fn flops_per_perm(&self) -> f64 {
        2.0 * self.q as f64 * self.n as f64 * self.v as f64
    }
}

/// The statistic of one (permutation, voxel) from its folded sums: `usq` = |u|^2 over all q
/// coefficients, `aux` = u_1 for t or |u_1..s|^2 for F, `ss` = ||E[:, v]||^2, `inv_s` = 1/s.
///
/// The one formula: the CPU engine's epilogue, the CPU ports of the shaders and (in WGSL,
/// `statistic4`) the shaders all compute exactly these operations in this order.
#[inline(always)]
pub fn statistic_of_sums(kind: StatKind, usq: f32, aux: f32, ss: f32, dof: f32, inv_s: f32) -> f32 {
    // In f32, ss - |u|^2 loses about 1e-7 * ss to cancellation, so RSS below 1e-6 * ss is
    // rounding noise; clamping there bounds the statistic (|t| <= 1000 sqrt(dof)) instead
    // of letting it reach Inf. Real data never come near: t = 10 with dof = 56 has
    // RSS = 0.36 ss.
    let rss = (ss - usq).max(ss * 1e-6);
    // One division and (for t) one square root: dof / RSS = 1 / sigma^2.
    let inv_sigma2 = dof / rss;
    let stat = match kind {
        StatKind::T => aux * inv_sigma2.sqrt(),
        StatKind::F => aux * inv_s * inv_sigma2,
    };
    // A voxel with no residual variance at all (ss = 0, or NaN) carries no evidence: 0,
    // never NaN. A select, not an early return, so that loops over voxels vectorize.
    if ss > 0.0 {
        stat
    } else {
        0.0
    }
}

/// The statistic from the projected coefficients `u` (length q): folds |u|^2 in the order
/// k = 0, 1, ... and calls [`statistic_of_sums`].
#[inline]
pub fn statistic(kind: StatKind, u: &[f32], s: usize, ss: f32, dof: f32) -> f32 {
    let mut usq = 0.0f32;
    let mut num = 0.0f32;
    for (k, &x) in u.iter().enumerate() {
        usq += x * x;
        if k < s {
            num += x * x;
        }
    }
    let aux = match kind {
        StatKind::T => u[0],
        StatKind::F => num,
    };
    statistic_of_sums(kind, usq, aux, ss, dof, 1.0 / s as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The closed forms: t = u_1 sqrt(dof / RSS), F = (|u_1..s|^2 / s) / (RSS / dof), and 0
    /// for a voxel without variance.
    #[test]
    fn statistic_closed_forms() {
        let u = [3.0f32, 4.0, 12.0];
        let (ss, dof) = (200.0f32, 10.0f32);
        let rss = 200.0 - (9.0 + 16.0 + 144.0);
        let t = statistic(StatKind::T, &u, 1, ss, dof);
        assert!((t - 3.0 * (dof / rss).sqrt()).abs() < 1e-5, "{t}");
        let f = statistic(StatKind::F, &u, 2, ss, dof);
        assert!((f - (25.0 / 2.0) / (rss / dof)).abs() < 1e-4, "{f}");
        assert_eq!(statistic(StatKind::T, &u, 1, 0.0, dof), 0.0);
        assert_eq!(statistic(StatKind::F, &u, 2, f32::NAN, dof), 0.0);
        // RSS clamped at 1e-6 ss: finite, |t| <= 1000 sqrt(dof) * |u_1| / sqrt(ss).
        let t = statistic(StatKind::T, &[10.0], 1, 100.0, dof);
        assert!(t.is_finite() && (t - 10.0 * (dof / 1e-4).sqrt()).abs() < 1.0, "{t}");
    }
}
