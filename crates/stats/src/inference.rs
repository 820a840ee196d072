//! p-values from permutation counts and the maximum-statistic null (DESIGN.md):
//! uncorrected p_v = #{j : T_jv >= T_0v} / P and FWE p_v = #{j : max_w T_jw >= T_0v} / P,
//! j over all P permutations including the identity, so p >= 1/P always.

/// The null distribution of a per-permutation maximum, sorted for counting.
#[derive(Clone, Debug)]
pub struct MaxStatNull {
    /// As produced, permutation order (index 0 = identity).
    pub values: Vec<f32>,
    sorted: Vec<f32>,
}

impl MaxStatNull {
    pub fn new(values: Vec<f32>) -> Self {
        let mut sorted = values.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        MaxStatNull { values, sorted }
    }
    pub fn len(&self) -> usize {
        self.values.len()
    }
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
    /// FWE-corrected p of an observed value: fraction of maxima >= it.
    pub fn corrected_p(&self, t0: f32) -> f64 {
        let below = self.sorted.partition_point(|&m| m < t0);
        (self.sorted.len() - below) as f64 / self.sorted.len() as f64
    }
    /// Quantile (nearest rank, q in [0, 1]).
    pub fn quantile(&self, q: f64) -> f32 {
        let n = self.sorted.len();
        let idx = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
        self.sorted[idx]
    }
    /// The smallest statistic with corrected p <= alpha (the FWE threshold), if any.
    pub fn threshold(&self, alpha: f64) -> f32 {
        // p(t) <= alpha  <=>  #{max >= t} <= alpha P. The count drops below alpha P just
        // above the k-th largest maximum, k = floor(alpha P) + 1.
        let n = self.sorted.len();
        let k = (alpha * n as f64).floor() as usize + 1;
        if k > n {
            return f32::NEG_INFINITY;
        }
        let v = self.sorted[n - k];
        // Strictly above the k-th largest.
        f32::from_bits(if v >= 0.0 { v.to_bits() + 1 } else { v.to_bits() - 1 })
    }
}

/// How p-values are written: randomise's 1 - p, or -log10 p (PALM's -logp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PScale {
    OneMinusP,
    NegLog10,
}

impl PScale {
    pub fn apply(self, p: f64) -> f32 {
        match self {
            PScale::OneMinusP => (1.0 - p) as f32,
            PScale::NegLog10 => (-p.log10()) as f32,
        }
    }
}

/// Uncorrected p per voxel from exceedance counts over P permutations.
pub fn uncorrected_p(counts: &[u32], nperm: usize) -> Vec<f64> {
    counts.iter().map(|&c| c as f64 / nperm as f64).collect()
}

/// Add exceedance counts `from` (of later permutations) into `into`, which takes them
/// when it has none yet: counts of disjoint ranges of permutations add.
pub fn add_counts(into: &mut Vec<u32>, from: Vec<u32>) {
    if into.is_empty() {
        *into = from;
    } else {
        for (c, x) in into.iter_mut().zip(&from) {
            *c += x;
        }
    }
}

/// Corrected p per voxel.
pub fn corrected_p(observed: &[f32], null: &MaxStatNull) -> Vec<f64> {
    observed.iter().map(|&t| null.corrected_p(t)).collect()
}

/// A null whose first entry (the identity permutation) is at least the observed map's
/// maximum. Permutation 0 is the identity, so its maximum is the observed map's maximum by
/// definition; where the null comes from another arithmetic than the observed values (the
/// GPU's fixed-point cluster masses against the CPU's f64 sums), rounding could put it a
/// hair below, and the most extreme voxel would get p = 0 instead of at least 1/P: raise it.
pub fn with_identity_floor(mut null: Vec<f32>, observed: &[f32]) -> Vec<f32> {
    let obs_max = observed.iter().copied().filter(|x| !x.is_nan()).fold(f32::NEG_INFINITY, f32::max);
    if let Some(first) = null.first_mut() {
        if obs_max > *first {
            *first = obs_max;
        }
    }
    null
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn corrected_p_counts_ties_and_identity() {
        let null = MaxStatNull::new(vec![3.0, 1.0, 2.0, 2.0, 5.0]);
        assert_eq!(null.corrected_p(2.0), 4.0 / 5.0);
        assert_eq!(null.corrected_p(5.0), 1.0 / 5.0);
        assert_eq!(null.corrected_p(6.0), 0.0);
        assert_eq!(null.corrected_p(-1.0), 1.0);
        // alpha = 0.2 with P = 5: only values above the 2nd largest (3.0) have p <= 0.2.
        let th = null.threshold(0.2);
        assert!(th > 3.0 && null.corrected_p(th) <= 0.2 && null.corrected_p(3.0) > 0.2);
    }
    #[test]
    fn identity_maximum_is_at_least_the_observed_maximum() {
        // The GPU rounded the identity's maximum a hair below the observed 7.0.
        let null = with_identity_floor(vec![6.999_999, 3.0, 8.0], &[1.0, f32::NAN, 7.0]);
        assert_eq!(null, vec![7.0, 3.0, 8.0]);
        // Already consistent (or above): unchanged; other permutations are never touched.
        assert_eq!(with_identity_floor(vec![7.5, 9.0], &[7.0]), vec![7.5, 9.0]);
        assert_eq!(with_identity_floor(vec![], &[7.0]), Vec::<f32>::new());
    }
}
