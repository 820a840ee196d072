//! randomise's `--glm_output`: the unpermuted GLM of the whole design, per voxel, in f64.
//!
//! With M (N x r) and t contrasts c_1..c_k (rows of design.con), as randomise's
//! `calculateTstat` on the input design: pe = M^+ y (r values), cope_j = c_j pe,
//! sigmasqr = |y - M pe|^2 / (N - rank M), varcope_j = c_j M^+ (M^+)' c_j' sigmasqr. The
//! pseudo-inverse keeps a rank-deficient design's estimable contrasts defined: pe is then
//! the minimum-norm solution (as randomise's pinv gives it; the pe of redundant columns
//! depend on that choice), while cope and varcope of an estimable contrast do not. The
//! pseudo-inverse cuts singular values at the tolerance of [`crate::rank`], so the two agree.
use nalgebra::DMatrix;

/// The maps of [`glm_maps`], each a list of in-mask maps (one per volume of its output).
#[derive(Clone, Debug)]
pub struct GlmMaps {
    /// One per design column.
    pub pe: Vec<Vec<f32>>,
    /// One per t contrast.
    pub cope: Vec<Vec<f32>>,
    /// One per t contrast.
    pub varcope: Vec<Vec<f32>>,
    /// One map: the residual variance.
    pub sigmasqr: Vec<f32>,
}

/// The GLM maps of data `y` (N x V, row-major) under design `m` and t contrasts
/// `contrasts` (each r weights). Errors when the design leaves no degrees of freedom.
pub fn glm_maps(m: &DMatrix<f64>, contrasts: &[Vec<f64>], y: &[f32], v: usize) -> Result<GlmMaps, String> {
    let (n, r) = m.shape();
    assert_eq!(y.len(), n * v);
    let rank = crate::rank(m);
    if n <= rank {
        return Err(format!("the design has rank {rank} with {n} rows: no degrees of freedom for --glm_output"));
    }
    let dof = (n - rank) as f64;
    let pinv = crate::pseudo_inverse(m);
    // pe[k][x] = sum_i pinv[k, i] y[i, x], rows of y read in order.
    let mut pe = vec![vec![0f64; v]; r];
    for i in 0..n {
        let row = &y[i * v..(i + 1) * v];
        for (k, pk) in pe.iter_mut().enumerate() {
            let w = pinv[(k, i)];
            for (p, &yv) in pk.iter_mut().zip(row) {
                *p += w * yv as f64;
            }
        }
    }
    let mut rss = vec![0f64; v];
    let mut fit = vec![0f64; v];
    for i in 0..n {
        fit.iter_mut().for_each(|f| *f = 0.0);
        for (k, pk) in pe.iter().enumerate() {
            let w = m[(i, k)];
            for (f, &p) in fit.iter_mut().zip(pk) {
                *f += w * p;
            }
        }
        for ((s, &f), &yv) in rss.iter_mut().zip(&fit).zip(&y[i * v..(i + 1) * v]) {
            *s += (yv as f64 - f).powi(2);
        }
    }
    let sigmasqr: Vec<f64> = rss.iter().map(|s| s / dof).collect();
    let pp = &pinv * pinv.transpose();
    let mut cope = Vec::with_capacity(contrasts.len());
    let mut varcope = Vec::with_capacity(contrasts.len());
    for c in contrasts {
        assert_eq!(c.len(), r, "a contrast has one weight per design column");
        let cv = nalgebra::DVector::from_column_slice(c);
        let scale = (cv.transpose() * &pp * &cv)[(0, 0)];
        cope.push((0..v).map(|x| c.iter().zip(&pe).map(|(w, pk)| w * pk[x]).sum::<f64>() as f32).collect());
        varcope.push(sigmasqr.iter().map(|s| (scale * s) as f32).collect());
    }
    let to_f32 = |a: &[f64]| a.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    Ok(GlmMaps { pe: pe.iter().map(|p| to_f32(p)).collect(), cope, varcope, sigmasqr: to_f32(&sigmasqr) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rank-deficient design [g1 g2 1 x]: pe is the minimum-norm least-squares solution
    /// (nalgebra's own pseudo-inverse, the oracle), and the cope, varcope and sigmasqr of
    /// the estimable contrast g1 - g2 equal those of the reduced design [g1 g2 x].
    #[test]
    fn rank_deficient_design_pe_is_the_minimum_norm_fit() {
        let x = [0.3, -1.2, 0.5, 2.0, 0.1, -0.7, 0.9];
        let m = DMatrix::from_fn(7, 4, |i, k| {
            let g = (i >= 3) as u8 as f64;
            [1.0 - g, g, 1.0, x[i]][k]
        });
        let reduced = DMatrix::from_columns(&[m.column(0), m.column(1), m.column(3)]);
        let y: Vec<f32> = (0..14).map(|k| ((k * 5 % 11) as f32 - 5.0) * 0.3).collect();
        let full = glm_maps(&m, &[vec![1.0, -1.0, 0.0, 0.0]], &y, 2).unwrap();
        let red = glm_maps(&reduced, &[vec![1.0, -1.0, 0.0]], &y, 2).unwrap();
        let ym = DMatrix::from_fn(7, 2, |i, v| y[i * 2 + v] as f64);
        let pe = m.clone().pseudo_inverse(1e-10).unwrap() * ym;
        // Values of order 1 stored as f32: 1e-5 absolute.
        let close = |a: f32, b: f64, what: &str| assert!((a as f64 - b).abs() < 1e-5, "{what}: {a} vs {b}");
        for v in 0..2 {
            for k in 0..4 {
                close(full.pe[k][v], pe[(k, v)], &format!("pe{k} voxel {v}"));
            }
            close(full.cope[0][v], red.cope[0][v] as f64, "cope");
            close(full.varcope[0][v], red.varcope[0][v] as f64, "varcope");
            close(full.sigmasqr[v], red.sigmasqr[v] as f64, "sigmasqr");
        }
    }
}
