//! The levels of randomise's stepwise TFCE, formed once for every path that sums over them
//! (the CPU's component tree, the GPU's level passes and their CPU port).
//!
//! FSL's `tfce()` (newimagefns.h) accumulates its thresholds in f32 from 0 (`h += dh`) and
//! enhances each voxel by the levels strictly below its value, so the levels are h_0 = 0,
//! h_k = h_{k-1} + dh in f32, for every k with h_k below the map's largest value. Forming
//! them exactly so is what puts a voxel sitting on a level (e.g. the observed maximum, on
//! level 100) on the same side as randomise does.

/// The most levels any map may need: past ~2^24 steps an f32 threshold stops increasing, so
/// a step this small against the map's maximum is an input error, not a workload.
pub const MAX_TFCE_LEVELS: usize = 1 << 24;

/// A TFCE step too small for a map's maximum.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
#[error("the TFCE step dh = {dh} needs more than {limit} levels for a map maximum of {max}: give a larger --tfce_D")]
pub struct TooManyLevels {
    pub dh: f32,
    pub max: f32,
    pub limit: usize,
}

/// Fills `out` with the levels h_k < `max` (h_0 = 0 first), at most `limit` of them.
///
/// Empty when `dh` is not positive and finite or `max` is not positive (then nothing is
/// enhanced). Errors when more than `limit` levels would be needed, or when an f32 step no
/// longer increases the threshold.
// Negated comparisons on purpose: a NaN step or maximum forms no level.
#[allow(clippy::neg_cmp_op_on_partial_ord)]
pub fn tfce_levels(max: f32, dh: f32, limit: usize, out: &mut Vec<f32>) -> Result<(), TooManyLevels> {
    out.clear();
    if !(dh > 0.0 && dh.is_finite() && max > 0.0) {
        return Ok(());
    }
    out.push(0.0);
    loop {
        let last = out[out.len() - 1];
        let next = last + dh;
        if next >= max {
            return Ok(());
        }
        if next <= last || out.len() >= limit {
            return Err(TooManyLevels { dh, max, limit });
        }
        out.push(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_accumulate_in_f32_below_the_maximum() {
        let mut hs = Vec::new();
        tfce_levels(1.0, 0.25, 100, &mut hs).unwrap();
        assert_eq!(hs, vec![0.0, 0.25, 0.5, 0.75]);
        // The maximum itself on a level: that level is not below it.
        tfce_levels(0.3f32 * 3.0, 0.3, 100, &mut hs).unwrap();
        let mut h = 0.0f32;
        let mut want = vec![h];
        while h + 0.3 < 0.3f32 * 3.0 {
            h += 0.3;
            want.push(h);
        }
        assert_eq!(hs, want);
        tfce_levels(-1.0, 0.1, 100, &mut hs).unwrap();
        assert!(hs.is_empty());
        tfce_levels(1.0, 0.0, 100, &mut hs).unwrap();
        assert!(hs.is_empty());
        tfce_levels(1.0, f32::NAN, 100, &mut hs).unwrap();
        assert!(hs.is_empty());
        let e = tfce_levels(5.0, 1e-7, MAX_TFCE_LEVELS, &mut hs).unwrap_err();
        assert!(e.to_string().contains("--tfce_D") && !e.to_string().contains('\n'), "{e}");
        assert_eq!(tfce_levels(10.0, 1.0, 5, &mut hs).unwrap_err().limit, 5);
    }
}
