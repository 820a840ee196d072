//! Smooth Gaussian random fields: white noise from a seeded ChaCha20 stream, convolved
//! with a separable Gaussian kernel and normalised so every voxel has unit variance.

use rand::RngCore;
use rand_chacha::ChaCha20Rng;

/// FWHM = 2 sqrt(2 ln 2) sigma.
const FWHM_PER_SIGMA: f64 = 2.354_820_045_030_949_3;

/// Fill `out` with independent N(0, 1) values (Box–Muller on 53-bit uniforms).
///
/// Box–Muller rather than a ziggurat because the project has no `rand_distr` and this
/// is exact, short and still fast next to the convolution.
pub fn fill_normal(rng: &mut ChaCha20Rng, out: &mut [f32]) {
    const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
    for pair in out.chunks_mut(2) {
        // u1 in (0, 1] so the logarithm is finite; u2 in [0, 1).
        let u1 = ((rng.next_u64() >> 11) as f64 + 1.0) * SCALE;
        let u2 = (rng.next_u64() >> 11) as f64 * SCALE;
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        pair[0] = (r * c) as f32;
        if let Some(second) = pair.get_mut(1) {
            *second = (r * s) as f32;
        }
    }
}

/// One axis of the separable smoother: the sampled Gaussian kernel and, for each position
/// along the axis, 1 / sqrt(sum of the squared kernel taps that fall inside the grid).
///
/// Convolving white unit-variance noise with taps k gives variance sum k^2, so dividing by
/// that norm makes every voxel exactly unit variance, including those near the grid edge
/// where the kernel is truncated (zero padding would otherwise shrink their variance).
/// The passes compose: after smoothing along x, values are still independent along y.
#[derive(Clone, Debug)]
struct AxisKernel {
    taps: Vec<f32>,
    radius: usize,
    inv_norm: Vec<f32>,
}

impl AxisKernel {
    fn new(n: usize, sigma_vox: f64) -> Self {
        let radius = if sigma_vox > 0.0 { (4.0 * sigma_vox).ceil() as usize } else { 0 };
        let taps: Vec<f32> = (0..=2 * radius)
            .map(|j| {
                let d = j as f64 - radius as f64;
                if sigma_vox > 0.0 {
                    (-0.5 * d * d / (sigma_vox * sigma_vox)).exp() as f32
                } else {
                    1.0
                }
            })
            .collect();
        let inv_norm = (0..n)
            .map(|i| {
                let (lo, hi) = tap_range(i, n, radius);
                let ss: f64 = (lo..=hi).map(|t| (taps[t + radius - i] as f64).powi(2)).sum();
                (1.0 / ss.sqrt()) as f32
            })
            .collect();
        AxisKernel { taps, radius, inv_norm }
    }
}

/// Grid positions t with |t - i| <= radius inside 0..n.
#[inline]
fn tap_range(i: usize, n: usize, radius: usize) -> (usize, usize) {
    (i.saturating_sub(radius), (i + radius).min(n - 1))
}

/// Separable Gaussian smoother for one grid, built once and shared by every field.
#[derive(Clone, Debug)]
pub struct Smoother {
    dims: [usize; 3],
    axes: [AxisKernel; 3],
}

impl Smoother {
    /// `fwhm_mm` <= 0 leaves white noise (unit variance, no smoothing).
    pub fn new(dims: [usize; 3], pixdim: [f32; 3], fwhm_mm: f64) -> Self {
        let sigma = |a: usize| (fwhm_mm / FWHM_PER_SIGMA / pixdim[a] as f64).max(0.0);
        Smoother {
            dims,
            axes: [
                AxisKernel::new(dims[0], sigma(0)),
                AxisKernel::new(dims[1], sigma(1)),
                AxisKernel::new(dims[2], sigma(2)),
            ],
        }
    }

    #[cfg(test)]
    pub fn nvox(&self) -> usize {
        self.dims.iter().product()
    }

    /// A fresh smooth unit-variance field from `rng`, left in `field`; `scratch` is a
    /// work buffer of the same length.
    pub fn field(&self, rng: &mut ChaCha20Rng, field: &mut [f32], scratch: &mut [f32]) {
        fill_normal(rng, scratch);
        self.smooth_x(scratch, field);
        let [nx, ny, nz] = self.dims;
        // y: blocks of one z-slice, rows of nx; z: one block, rows of one xy-plane.
        convolve_rows(field, scratch, ny, nx, &self.axes[1]);
        convolve_rows(scratch, field, nz, nx * ny, &self.axes[2]);
    }

    fn smooth_x(&self, src: &[f32], dst: &mut [f32]) {
        let k = &self.axes[0];
        let n = self.dims[0];
        for (s, d) in src.chunks_exact(n).zip(dst.chunks_exact_mut(n)) {
            for (i, (out, scale)) in d.iter_mut().zip(&k.inv_norm).enumerate() {
                let (lo, hi) = tap_range(i, n, k.radius);
                let taps = &k.taps[lo + k.radius - i..=hi + k.radius - i];
                let acc: f32 = taps.iter().zip(&s[lo..=hi]).map(|(w, v)| w * v).sum();
                *out = acc * scale;
            }
        }
    }
}

/// Convolve along an axis of length `n` whose neighbouring elements are `row` apart: the
/// data are blocks of `n` rows of `row` contiguous values, and each output row is a
/// weighted sum of whole input rows, which vectorises.
fn convolve_rows(src: &[f32], dst: &mut [f32], n: usize, row: usize, k: &AxisKernel) {
    for (sb, db) in src.chunks_exact(n * row).zip(dst.chunks_exact_mut(n * row)) {
        for i in 0..n {
            let out = &mut db[i * row..(i + 1) * row];
            out.fill(0.0);
            let (lo, hi) = tap_range(i, n, k.radius);
            for t in lo..=hi {
                let w = k.taps[t + k.radius - i];
                for (o, &v) in out.iter_mut().zip(&sb[t * row..(t + 1) * row]) {
                    *o += w * v;
                }
            }
            let s = k.inv_norm[i];
            out.iter_mut().for_each(|o| *o *= s);
        }
    }
}

/// Correlation between neighbours `lag` voxels apart along one axis that the sampled
/// kernel implies (away from the grid edges): sum k_j k_{j+lag} / sum k_j^2.
#[cfg(test)]
pub fn kernel_lag_correlation(pixdim_mm: f64, fwhm_mm: f64, lag: usize) -> f64 {
    let k = AxisKernel::new(1, fwhm_mm / FWHM_PER_SIGMA / pixdim_mm);
    let t: Vec<f64> = k.taps.iter().map(|&v| v as f64).collect();
    let num: f64 = (0..t.len().saturating_sub(lag)).map(|j| t[j] * t[j + lag]).sum();
    num / t.iter().map(|v| v * v).sum::<f64>()
}
