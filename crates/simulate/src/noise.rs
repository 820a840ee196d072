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

    /// Along x, each output is the taps' products summed in tap order, exactly as
    /// `Iterator::sum` adds them; the outputs whose taps all fall inside the row are formed
    /// tap by tap across the row (the same additions in the same order, so the same bits,
    /// but vectorised), the rest one by one.
    fn smooth_x(&self, src: &[f32], dst: &mut [f32]) {
        let k = &self.axes[0];
        let (n, r) = (self.dims[0], k.radius);
        // The value `sum` starts from (-0.0 in current Rust), so that a sum of -0.0 terms
        // keeps its sign as the one-by-one sum does.
        let start: f32 = std::iter::empty::<f32>().sum();
        let inner = if n > 2 * r { r..n - r } else { 0..0 };
        for (s, d) in src.chunks_exact(n).zip(dst.chunks_exact_mut(n)) {
            for i in (0..inner.start).chain(inner.end.max(inner.start)..n) {
                d[i] = edge_tap_sum(k, s, i);
            }
            if inner.is_empty() {
                continue;
            }
            let out = &mut d[inner.clone()];
            out.fill(start);
            for (j, &w) in k.taps.iter().enumerate() {
                for (o, &v) in out.iter_mut().zip(&s[j..j + inner.len()]) {
                    *o += w * v;
                }
            }
            out.iter_mut().zip(&k.inv_norm[inner.clone()]).for_each(|(o, &scale)| *o *= scale);
        }
    }
}

/// Output `i` of one row smoothed along x, its taps clipped to the row.
fn edge_tap_sum(k: &AxisKernel, s: &[f32], i: usize) -> f32 {
    let (lo, hi) = tap_range(i, s.len(), k.radius);
    let taps = &k.taps[lo + k.radius - i..=hi + k.radius - i];
    let acc: f32 = taps.iter().zip(&s[lo..=hi]).map(|(w, v)| w * v).sum();
    acc * k.inv_norm[i]
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The x pass as it was first written, one output at a time: the reference the
    /// vectorised pass must equal bit for bit (so simulated datasets do not change).
    fn smooth_x_one_by_one(sm: &Smoother, src: &[f32], dst: &mut [f32]) {
        let k = &sm.axes[0];
        let n = sm.dims[0];
        for (s, d) in src.chunks_exact(n).zip(dst.chunks_exact_mut(n)) {
            for (i, (out, scale)) in d.iter_mut().zip(&k.inv_norm).enumerate() {
                let (lo, hi) = tap_range(i, n, k.radius);
                let taps = &k.taps[lo + k.radius - i..=hi + k.radius - i];
                let acc: f32 = taps.iter().zip(&s[lo..=hi]).map(|(w, v)| w * v).sum();
                *out = acc * scale;
            }
        }
    }

    #[test]
    fn vectorised_x_pass_is_bit_identical_to_one_by_one() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        // Rows longer than the kernel, exactly as long, and shorter; 2 mm and 4 mm voxels.
        for (nx, pix) in [(91, 2.0), (45, 4.0), (15, 2.0), (16, 2.0), (3, 2.0), (1, 4.0)] {
            let sm = Smoother::new([nx, 4, 3], [pix, 2.0, 2.0], 8.0);
            let mut src = vec![0f32; sm.nvox()];
            fill_normal(&mut rng, &mut src);
            // Zeros of both signs, where the sum's starting value shows.
            src.iter_mut().step_by(7).for_each(|x| *x = -0.0);
            src.iter_mut().step_by(11).for_each(|x| *x = 0.0);
            let (mut a, mut b) = (vec![1f32; sm.nvox()], vec![2f32; sm.nvox()]);
            sm.smooth_x(&src, &mut a);
            smooth_x_one_by_one(&sm, &src, &mut b);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "nx = {nx}");
        }
        // An all -0.0 row keeps its sign.
        let sm = Smoother::new([40, 1, 1], [2.0; 3], 8.0);
        let (src, mut a, mut b) = (vec![-0.0f32; 40], vec![1f32; 40], vec![2f32; 40]);
        sm.smooth_x(&src, &mut a);
        smooth_x_one_by_one(&sm, &src, &mut b);
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}
