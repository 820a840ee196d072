//! CPU port of `shader/tfce.wgsl` (stepwise TFCE level by level over a batch), and the tables
//! the host uploads for it, built here so that host and twin use the very same numbers.
use super::label_components::{label_components, measure, MODE_TFCE, NONE};
use voxflip_stats::spatial::{pow_fast, tfce_levels, TooManyLevels};

/// Most levels a batch may need on the GPU path: every level costs four dispatches on the
/// device (the CPU's component tree allows [`voxflip_stats::spatial::MAX_TFCE_LEVELS`]).
pub const MAX_LEVELS: usize = 1 << 16;

/// The levels of a batch, exactly as FSL forms them ([`voxflip_stats::spatial::tfce_levels`],
/// the table the CPU's stepwise TFCE uses too) for the largest positive finite value of
/// `maps`, with h_k^H in f32. Empty when `dh` is not positive and finite or nothing is
/// positive; an error when more than [`MAX_LEVELS`] are needed.
pub fn level_table(maps: &[f32], dh: f32, h_exp: f32) -> Result<(Vec<f32>, Vec<f32>), TooManyLevels> {
    let max = maps.iter().copied().filter(|&x| x.is_finite() && x > 0.0).fold(f32::NEG_INFINITY, f32::max);
    let mut hs = Vec::new();
    tfce_levels(max, dh, MAX_LEVELS, &mut hs)?;
    let hpow = hs.iter().map(|&h| pow_fast(h as f64, h_exp as f64) as f32).collect();
    Ok((hs, hpow))
}

/// s^E for s = 0..=v, in f32.
pub fn size_pow_table(v: usize, e_exp: f32) -> Vec<f32> {
    (0..=v).map(|s| pow_fast(s as f64, e_exp as f64) as f32).collect()
}

/// Stepwise TFCE of every map of the batch: for each level k with h_k^H != 0, label
/// {x > h_k, x finite}, and add `sizepow[size] * hpow[k]` to each member voxel, in f32, from
/// the top level down (the device keeps one union-find as the set grows level by level, so
/// it sums in that order). Levels with h_k^H = 0 (h_0 for H > 0) add exactly nothing and
/// are skipped, on the device too. Every term is positive: the order changes the rounding
/// of the sum, not its error bound against the f64 reference.
pub fn tfce(nbrs: &[u32], width: usize, maps: &[f32], v: usize, hs: &[f32], hpow: &[f32], sizepow: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; maps.len()];
    for (k, &h) in hs.iter().enumerate().rev() {
        if hpow[k] == 0.0 {
            continue;
        }
        let parent = label_components(nbrs, width, maps, v, h, MODE_TFCE);
        let acc = measure(&parent, maps, v, None);
        for (i, &r) in parent.iter().enumerate() {
            if r != NONE {
                let s = acc[(i / v) * v + r as usize][0];
                let term = sizepow[s as usize] * hpow[k];
                out[i] += term;
            }
        }
    }
    out
}

/// Per-map maximum of the TFCE maps, folded from 0 (as `SpatialJob::reduce`).
pub fn tfce_max(tfce: &[f32], v: usize) -> Vec<f32> {
    tfce.chunks(v).map(|m| m.iter().copied().fold(0f32, f32::max)).collect()
}

/// Adds the exceedance counts `tfce_jv >= observed_v` of every map to `counts`.
pub fn tfce_counts(tfce: &[f32], observed: &[f32], counts: &mut [u32]) {
    for m in tfce.chunks(observed.len()) {
        for ((c, &t), &o) in counts.iter_mut().zip(m).zip(observed) {
            *c += (t >= o) as u32;
        }
    }
}
