//! randomise's variance smoothing (`-v sigma`): the pseudo-t.
//!
//! randomise (randomise.cc, `smoothTstat`, with newimage's `smooth` and `convolve`) smooths
//! each permutation's residual variance map sigma^2 = RSS / dof within the mask and divides
//! the t statistic by sqrt(smoothed / own), so that the pseudo-t is
//! u_1 / sqrt(c'(X'X)^+c * smoothed sigma^2). The smoothing is a normalised convolution:
//! the variance, zero outside the mask and outside the grid, convolved with a separable
//! Gaussian (std sigma mm, in voxels sigma / pixdim on each axis), divided by the
//! convolution of the mask itself. Each axis's kernel has `2 r + 1` taps with
//! r = 2 floor(sigma_vox - 0.001) + 3, weights exp(-j^2 / (2 sigma_vox^2)) normalised to
//! sum 1 (a single tap 1 when sigma_vox <= 1e-6). randomise smooths t contrasts only; its
//! F statistics are never smoothed.
use rayon::prelude::*;

/// The smoothing of maps over one mask, its kernels and the convolved mask precomputed.
#[derive(Clone, Debug)]
pub struct VarianceSmoothing {
    sigma_mm: f64,
    /// Bounding box of the mask: origin and extent (the convolution of a map that is zero
    /// outside the mask is zero-padded there, so nothing outside the box contributes).
    origin: [usize; 3],
    extent: [usize; 3],
    /// Box-linear index (x fastest) of each in-mask voxel, in the mask's order.
    at: Vec<usize>,
    /// Per axis, the kernel's weights from -r to r.
    kernels: [Vec<f64>; 3],
    /// The convolved mask at each in-mask voxel (> 0: the centre tap counts).
    norm: Vec<f64>,
}

/// randomise's kernel for std `sigma` voxels (`gaussian_kernel1D` with its radius rule).
pub fn randomise_kernel(sigma: f64) -> Vec<f64> {
    let r = 2 * ((sigma - 0.001) as i64).max(0) + 3;
    let w: Vec<f64> = (-r..=r)
        .map(|j| if sigma > 1e-6 { (-((j * j) as f64) / (2.0 * sigma * sigma)).exp() } else { (j == 0) as u8 as f64 })
        .collect();
    let sum: f64 = w.iter().sum();
    w.into_iter().map(|x| x / sum).collect()
}

impl VarianceSmoothing {
    /// The smoothing with std `sigma_mm` over the in-mask voxels `voxels` (grid-linear
    /// indices, x fastest) of a grid `dims` with voxel sizes `pixdim` (mm). An error says
    /// what is wrong with sigma or the voxel sizes.
    pub fn new(dims: [usize; 3], voxels: &[u32], pixdim: [f32; 3], sigma_mm: f64) -> Result<Self, String> {
        if !(sigma_mm.is_finite() && sigma_mm > 0.0) {
            return Err(format!("the smoothing std must be a positive number of mm, got {sigma_mm}"));
        }
        if let Some(p) = pixdim.iter().find(|p| !(p.is_finite() && **p > 0.0)) {
            return Err(format!("variance smoothing needs positive voxel sizes (pixdim), and the header has {p}"));
        }
        let xyz = |lin: usize| [lin % dims[0], (lin / dims[0]) % dims[1], lin / (dims[0] * dims[1])];
        let (mut lo, mut hi) = ([usize::MAX; 3], [0usize; 3]);
        for &l in voxels {
            let p = xyz(l as usize);
            for a in 0..3 {
                lo[a] = lo[a].min(p[a]);
                hi[a] = hi[a].max(p[a]);
            }
        }
        if voxels.is_empty() {
            (lo, hi) = ([0; 3], [0; 3]);
        }
        let extent = [0, 1, 2].map(|a| hi[a] + 1 - lo[a]);
        let at = voxels
            .iter()
            .map(|&l| {
                let p = xyz(l as usize);
                (p[0] - lo[0]) + extent[0] * ((p[1] - lo[1]) + extent[1] * (p[2] - lo[2]))
            })
            .collect();
        let kernels = [0, 1, 2].map(|a| randomise_kernel(sigma_mm / pixdim[a] as f64));
        let mut s = VarianceSmoothing { sigma_mm, origin: lo, extent, at, kernels, norm: Vec::new() };
        let ones = vec![1.0; voxels.len()];
        s.norm = s.convolve(&ones);
        Ok(s)
    }

    /// The std in mm.
    pub fn sigma_mm(&self) -> f64 {
        self.sigma_mm
    }

    /// In-mask voxels.
    pub fn len(&self) -> usize {
        self.at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    /// Where the mask's bounding box starts in the grid (for tests).
    pub fn origin(&self) -> [usize; 3] {
        self.origin
    }

    /// The convolution (x, then y, then z, as randomise) of `values` (in-mask, zero
    /// elsewhere), at the in-mask voxels.
    fn convolve(&self, values: &[f64]) -> Vec<f64> {
        let [ex, ey, ez] = self.extent;
        let mut a = vec![0f64; ex * ey * ez];
        for (&i, &x) in self.at.iter().zip(values) {
            a[i] = x;
        }
        let mut b = vec![0f64; a.len()];
        let strides = [1, ex, ex * ey];
        for ((k, &extent), stride) in self.kernels.iter().zip(&self.extent).zip(strides) {
            let r = (k.len() / 2) as isize;
            let len = extent as isize;
            for (i, out) in b.iter_mut().enumerate() {
                let c = ((i / stride) % extent) as isize;
                let lo = (-r).max(-c);
                let hi = r.min(len - 1 - c);
                let mut acc = 0.0;
                for j in lo..=hi {
                    acc += k[(j + r) as usize] * a[(i as isize + j * stride as isize) as usize];
                }
                *out = acc;
            }
            std::mem::swap(&mut a, &mut b);
        }
        self.at.iter().map(|&i| a[i]).collect()
    }

    /// The smoothed map of `values` (one per in-mask voxel): the convolution divided by the
    /// convolved mask.
    pub fn smooth(&self, values: &[f64]) -> Vec<f64> {
        assert_eq!(values.len(), self.at.len(), "one value per in-mask voxel");
        self.convolve(values).into_iter().zip(&self.norm).map(|(x, n)| x / n).collect()
    }

    /// The pseudo-t maps of a batch: from each permutation's t map and its residual
    /// variance sigma^2 (`sigma2`, the same layout: permutation-major, one value per
    /// in-mask voxel), t * sqrt(sigma^2 / smoothed sigma^2) = u_1 / sqrt(smoothed sigma^2)
    /// in place of t. A voxel whose own or smoothed variance is 0 (no residual variance
    /// anywhere near it: t carries no evidence there) gets 0.
    pub fn pseudo_t(&self, t: &mut [f32], sigma2: &[f64]) {
        let v = self.at.len();
        if v == 0 {
            return;
        }
        assert_eq!(t.len(), sigma2.len());
        t.par_chunks_mut(v).zip(sigma2.par_chunks(v)).for_each(|(t, s2)| {
            let sm = self.smooth(s2);
            for ((t, &own), &smoothed) in t.iter_mut().zip(s2).zip(&sm) {
                *t = pseudo_t_of(*t as f64, own, smoothed) as f32;
            }
        });
    }

    /// The pseudo-t map of one f64 t map and its sigma^2 (the observed map's, before it is
    /// rounded to f32), as [`VarianceSmoothing::pseudo_t`] forms each permutation's.
    pub fn pseudo_t_f64(&self, t: &[f64], sigma2: &[f64]) -> Vec<f64> {
        assert_eq!(t.len(), sigma2.len());
        let sm = self.smooth(sigma2);
        t.iter().zip(sigma2).zip(&sm).map(|((&t, &own), &smoothed)| pseudo_t_of(t, own, smoothed)).collect()
    }
}

/// t sqrt(sigma^2 / smoothed sigma^2), 0 where either variance is 0.
fn pseudo_t_of(t: f64, own: f64, smoothed: f64) -> f64 {
    if own > 0.0 && smoothed > 0.0 {
        t * (own / smoothed).sqrt()
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// randomise's radius rule r = 2 floor(sigma - 0.001) + 3 (sigma 1.0 has r = 3, 7 taps;
    /// sigma 2.0 has r = 5, as floor(1.999) = 1) and its normalisation (weights sum to 1).
    #[test]
    fn kernel_radius_and_weights() {
        for (sigma, taps) in [(0.5, 7), (1.0, 7), (1.0011, 11), (1.5, 11), (2.0, 11), (2.0011, 15), (3.7, 19)] {
            let k = randomise_kernel(sigma);
            assert_eq!(k.len(), taps, "sigma {sigma}");
            assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            let r = k.len() / 2;
            // exp(-1 / (2 sigma^2)) between the centre and its neighbour.
            assert!((k[r + 1] / k[r] - (-1.0 / (2.0 * sigma * sigma)).exp()).abs() < 1e-12);
        }
        assert_eq!(randomise_kernel(1e-7), vec![0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
    }

    /// A constant map stays constant (the normalisation by the convolved mask), on a
    /// ragged mask that touches the grid's faces.
    #[test]
    fn constant_stays_constant() {
        let dims = [6, 5, 4];
        let voxels: Vec<u32> = (0..120u32).filter(|l| l % 3 != 1).collect();
        let s = VarianceSmoothing::new(dims, &voxels, [2.0, 3.0, 1.5], 4.0).unwrap();
        let out = s.smooth(&vec![2.5; voxels.len()]);
        assert!(out.iter().all(|x| (x - 2.5).abs() < 1e-12));
    }

    #[test]
    fn bad_sigma_or_pixdim_is_an_error() {
        assert!(VarianceSmoothing::new([2, 2, 2], &[0], [1.0; 3], 0.0).is_err());
        assert!(VarianceSmoothing::new([2, 2, 2], &[0], [1.0; 3], f64::NAN).is_err());
        assert!(VarianceSmoothing::new([2, 2, 2], &[0], [1.0, 0.0, 1.0], 2.0).is_err());
    }
}
