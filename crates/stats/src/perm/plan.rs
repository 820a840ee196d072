//! What a permutation set will be before it is built: how many permutations, whether they
//! are every distinct one, and the memory they take, so that a run can refuse a request
//! the machine cannot hold before any work (and `-q` can answer without building it).
use super::{count_distinct_in_blocks, Blocks, PermKind};

/// The most permutations an exhaustive set enumerates.
pub const MAX_EXHAUSTIVE: u128 = 10_000_000;

/// Bytes the repeat check of a random draw takes per permutation, at most: a 4-byte index
/// and a control byte per slot of a table kept at least 7/16 full (hashbrown grows it
/// two-fold when 7/8 full), so 5 x 16/7 < 12.
pub const DEDUP_BYTES: u64 = 12;

/// The size and kind of a set, before it is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetPlan {
    /// Number of distinct transformations (None: more than u128 holds).
    pub distinct: Option<u128>,
    /// Every distinct transformation will be in the set.
    pub exhaustive: bool,
    /// Permutations in the set, the identity included.
    pub len: usize,
}

impl SetPlan {
    /// The set [`super::PermSet::generate_in_blocks`] builds for these arguments, or why
    /// none can be built.
    pub fn new(n: usize, kind: PermKind, labels: &[u32], blocks: &Blocks, requested: usize) -> Result<SetPlan, String> {
        assert_eq!(labels.len(), n);
        assert_eq!(blocks.of_row.len(), n);
        let distinct = count_distinct_in_blocks(kind, labels, blocks);
        let exhaustive = match distinct {
            Some(d) => requested == 0 || d <= requested as u128,
            None => false,
        };
        if requested == 0 && !exhaustive {
            return Err(format!(
                "-n 0 asks for every permutation, but there are more than 2^128 (N = {n}); give a number instead"
            ));
        }
        let len = match distinct {
            Some(d) if exhaustive => {
                if d > MAX_EXHAUSTIVE {
                    return Err(format!("exhaustive enumeration would need {d} permutations; ask for fewer with -n"));
                }
                d as usize
            }
            _ => requested,
        };
        Ok(SetPlan { distinct, exhaustive, len })
    }

    /// Bytes the built set takes (packed sign words, row sources, and for a random draw the
    /// repeat check), as u64 so that an absurd request cannot overflow it.
    pub fn bytes(&self, n: usize, kind: PermKind) -> u64 {
        let words = if kind.flips() { n.div_ceil(32) as u64 * 4 } else { 0 };
        let src = if kind.permutes() { n as u64 * 4 } else { 0 };
        let dedup = if self.exhaustive { 0 } else { DEDUP_BYTES };
        (self.len as u64).saturating_mul(words + src + dedup)
    }
}

#[cfg(test)]
mod tests {
    use super::super::PermSet;
    use super::*;

    #[test]
    fn plans_say_what_generate_builds() {
        let blocks = Blocks::single(6);
        let labels = [0, 0, 0, 1, 1, 1];
        for (kind, requested) in
            [(PermKind::Permute, 0), (PermKind::Permute, 7), (PermKind::SignFlip, 100), (PermKind::Both, 50)]
        {
            let plan = SetPlan::new(6, kind, &labels, &blocks, requested).unwrap();
            let set = PermSet::generate_in_blocks(6, kind, &labels, &blocks, requested, 1).unwrap();
            assert_eq!((plan.len, plan.exhaustive), (set.len(), set.exhaustive), "{kind:?} -n {requested}");
        }
    }

    #[test]
    fn an_absurd_request_is_planned_without_being_built() {
        // 2^40 distinct sign flips, 10^11 asked for: random, and about 1.6 TB.
        let plan = SetPlan::new(40, PermKind::SignFlip, &[0; 40], &Blocks::single(40), 99_999_999_999).unwrap();
        assert!(!plan.exhaustive);
        assert_eq!(plan.len, 99_999_999_999);
        assert_eq!(plan.bytes(40, PermKind::SignFlip), 99_999_999_999 * (8 + DEDUP_BYTES));
    }
}
