//! Exchangeability blocks and the counting of distinct transformations.
use super::PermKind;

/// Exchangeability blocks (randomise `-e design.grp`, with `--permuteBlocks`; PALM `-eb`
/// with `-within` or `-whole`): which rows may be exchanged with which under the null.
///
/// - Within blocks (the default): rows are reordered only among rows of the same block;
///   sign flips are per row, as without blocks.
/// - Whole blocks: blocks (all of one size) are reordered as units, each keeping its rows'
///   order; sign flips give all the rows of a block one sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocks {
    /// The rows of each block in increasing order; blocks in order of first appearance.
    pub(super) members: Vec<Vec<u32>>,
    /// The block of each row.
    pub(super) of_row: Vec<u32>,
    /// Each block's id (its label in design.grp; rows fixed by [`Blocks::fixing`] get ids
    /// below every label), which orders randomise's enumeration.
    pub(super) ids: Vec<i128>,
    /// Exchange whole blocks rather than rows within blocks.
    pub whole: bool,
}

impl Blocks {
    /// Every row in one block: no restriction.
    pub fn single(n: usize) -> Blocks {
        Blocks { members: vec![(0..n as u32).collect()], of_row: vec![0; n], ids: vec![0], whole: false }
    }

    /// Blocks from one label per row (equal labels = same block, any integers). Whole-block
    /// exchange needs every block to have the same number of rows.
    pub fn from_labels(labels: &[i64], whole: bool) -> Result<Blocks, String> {
        let wide: Vec<i128> = labels.iter().map(|&l| l as i128).collect();
        Blocks::from_ids(&wide, whole)
    }

    fn from_ids(labels: &[i128], whole: bool) -> Result<Blocks, String> {
        let mut ids: Vec<i128> = Vec::new();
        let mut members: Vec<Vec<u32>> = Vec::new();
        let mut of_row = Vec::with_capacity(labels.len());
        for (i, &l) in labels.iter().enumerate() {
            let b = match ids.iter().position(|&x| x == l) {
                Some(b) => b,
                None => {
                    ids.push(l);
                    members.push(Vec::new());
                    ids.len() - 1
                }
            };
            members[b].push(i as u32);
            of_row.push(b as u32);
        }
        if whole {
            if let Some(b) = members.iter().position(|m| m.len() != members[0].len()) {
                return Err(format!(
                    "whole-block exchange (--permuteBlocks) needs blocks of equal size, but block {} has {} rows and block {} has {}",
                    ids[0],
                    members[0].len(),
                    ids[b],
                    members[b].len()
                ));
            }
        }
        Ok(Blocks { members, of_row, ids, whole })
    }

    /// The same blocks with each of `rows` taken out into a block of its own, so that it is
    /// never exchanged (randomise --detectNull). Only for exchange within blocks.
    pub fn fixing(&self, rows: &[usize]) -> Blocks {
        assert!(!self.whole, "rows are fixed only under exchange within blocks");
        let mut labels: Vec<i128> = self.of_row.iter().map(|&b| self.ids[b as usize]).collect();
        for &r in rows {
            labels[r] = i64::MIN as i128 - 1 - r as i128;
        }
        Blocks::from_ids(&labels, false).expect("within-block exchange takes any blocks")
    }

    /// The block of each row (blocks numbered in order of first appearance).
    pub fn of_rows(&self) -> &[u32] {
        &self.of_row
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Row sources from the shuffled `orders`: for within-block exchange, `orders[b]` is the
    /// sequence of rows of block b placed at its positions; for whole blocks, `orders[0][i]`
    /// is the block whose rows (in order) go to block i's positions.
    pub(super) fn fill_src(&self, orders: &[Vec<u32>], src: &mut [u32]) {
        if self.whole {
            for (i, &from) in orders[0].iter().enumerate() {
                for (&dst, &s) in self.members[i].iter().zip(&self.members[from as usize]) {
                    src[dst as usize] = s;
                }
            }
        } else {
            for (rows, order) in self.members.iter().zip(orders) {
                for (&dst, &s) in rows.iter().zip(order) {
                    src[dst as usize] = s;
                }
            }
        }
    }

    /// Label of each block's label sequence (blocks with the same sequence of design-row
    /// labels are interchangeable as wholes), in order of first appearance.
    fn block_signatures(&self, labels: &[u32]) -> Vec<u32> {
        let mut seen: Vec<Vec<u32>> = Vec::new();
        self.members
            .iter()
            .map(|rows| {
                let sig: Vec<u32> = rows.iter().map(|&r| labels[r as usize]).collect();
                match seen.iter().position(|s| *s == sig) {
                    Some(p) => p as u32,
                    None => {
                        seen.push(sig);
                        (seen.len() - 1) as u32
                    }
                }
            })
            .collect()
    }

    /// Number of distinct relabelings allowed, or None on overflow.
    fn count_relabelings(&self, labels: &[u32]) -> Option<u128> {
        if self.whole {
            multinomial(&self.block_signatures(labels))
        } else {
            self.members.iter().try_fold(1u128, |acc, rows| {
                let l: Vec<u32> = rows.iter().map(|&r| labels[r as usize]).collect();
                acc.checked_mul(multinomial(&l)?)
            })
        }
    }

    /// Every distinct relabeling allowed, as row sources, the identity first.
    pub(super) fn relabelings(&self, labels: &[u32]) -> Vec<Vec<u32>> {
        let n = self.of_row.len();
        let mut out = Vec::new();
        let mut src: Vec<u32> = (0..n as u32).collect();
        if self.whole {
            for order in multiset_permutations(&self.block_signatures(labels)) {
                self.fill_src(&[order], &mut src);
                out.push(src.clone());
            }
            return out;
        }
        randomise_walk(&self.members, &self.walk_order(), labels)
    }

    /// Block indices in the order randomise's odometer takes them: by block id, ascending
    /// (randomise numbers blocks 1, 2, ... from design.grp and advances block 1 first).
    pub(super) fn walk_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.members.len()).collect();
        order.sort_by_key(|&b| self.ids[b]);
        order
    }
}

/// Every distinct relabeling within blocks, as row sources, in the order and with the
/// representatives FSL randomise enumerates them (its `Permuter` in exhaustive mode), the
/// identity first.
///
/// A relabeling (which label each row position receives) has many row permutations that
/// realise it when rows share a label. When labels are identical rows of the whole design
/// the statistic does not depend on which one is used; when they are randomise's effective
/// regressor (the demeaned design times the contrast) rows with equal labels can still
/// differ in their nuisance, and the exhaustive p-values depend on the representative.
/// randomise takes, per step: each block's labels (numbered by first appearance within the
/// block, like its design labels) advanced by `std::next_permutation`, block after block
/// as an odometer (a block that wraps back to its start carries into the next); then it
/// moves its running row permutation from the old labels to the new by swaps, position by
/// position (`createTruePermutation`). This is a port of that walk, quirks included: the
/// inner search keeps swapping after a position is fixed.
fn randomise_walk(members: &[Vec<u32>], order: &[usize], labels: &[u32]) -> Vec<Vec<u32>> {
    let n: usize = members.iter().map(Vec::len).sum();
    // Labels renumbered within each block by first appearance (next_permutation compares
    // them) and offset by block, so that no two blocks share one: randomise's labels are of
    // the design's rows with their block (design | group), and its swaps never cross blocks.
    let mut local = vec![0u64; n];
    for (b, rows) in members.iter().enumerate() {
        let offset = (b * n) as u64;
        let mut seen: Vec<u32> = Vec::new();
        for &r in rows {
            let l = labels[r as usize];
            let k = seen.iter().position(|&x| x == l).unwrap_or_else(|| {
                seen.push(l);
                seen.len() - 1
            });
            local[r as usize] = offset + k as u64;
        }
    }
    let start: Vec<Vec<u64>> = members.iter().map(|rows| rows.iter().map(|&r| local[r as usize]).collect()).collect();
    let mut current = start.clone();
    let mut old = local.clone();
    let mut permvec: Vec<u32> = (0..n as u32).collect();
    let mut out = vec![permvec.clone()];
    loop {
        // The odometer: advance blocks in order until one does not wrap to its start.
        let mut carried_out = true;
        for &b in order {
            // Like std::next_permutation, a wrap leaves the sequence sorted.
            next_permutation(&mut current[b]);
            if current[b] != start[b] {
                carried_out = false;
                break;
            }
        }
        if carried_out {
            return out;
        }
        let mut new = vec![0u64; n];
        for (rows, seq) in members.iter().zip(&current) {
            for (&r, &l) in rows.iter().zip(seq) {
                new[r as usize] = l;
            }
        }
        for k in 0..n {
            if new[k] != old[k] {
                for l in 0..n {
                    if new[l] != old[l] && old[l] == new[k] {
                        permvec.swap(l, k);
                        old.swap(l, k);
                    }
                }
            }
        }
        out.push(permvec.clone());
    }
}

/// The natural logarithm of the number of distinct transformations under exchangeability
/// blocks: for counts beyond u128, which [`count_distinct_in_blocks`] cannot give.
pub fn ln_count_distinct_in_blocks(kind: PermKind, labels: &[u32], blocks: &Blocks) -> f64 {
    let units = if blocks.whole { blocks.len() } else { labels.len() };
    let flips = if kind.flips() { units as f64 * std::f64::consts::LN_2 } else { 0.0 };
    let relabelings = match (kind.permutes(), blocks.whole) {
        (false, _) => 0.0,
        (true, true) => ln_multinomial(&blocks.block_signatures(labels)),
        (true, false) => blocks
            .members
            .iter()
            .map(|rows| ln_multinomial(&rows.iter().map(|&r| labels[r as usize]).collect::<Vec<u32>>()))
            .sum(),
    };
    flips + relabelings
}

/// ln(N! / prod(count_l!)) for the label multiset.
fn ln_multinomial(labels: &[u32]) -> f64 {
    let ln_factorial = |k: usize| (2..=k).map(|i| (i as f64).ln()).sum::<f64>();
    let mut counts: std::collections::BTreeMap<u32, usize> = Default::default();
    for &l in labels {
        *counts.entry(l).or_insert(0) += 1;
    }
    ln_factorial(labels.len()) - counts.values().map(|&c| ln_factorial(c)).sum::<f64>()
}

/// Number of distinct transformations, or None if it exceeds u128.
pub fn count_distinct(n: usize, kind: PermKind, labels: &[u32]) -> Option<u128> {
    count_distinct_in_blocks(kind, labels, &Blocks::single(n))
}

/// Number of distinct transformations under exchangeability blocks, or None if it exceeds u128.
pub fn count_distinct_in_blocks(kind: PermKind, labels: &[u32], blocks: &Blocks) -> Option<u128> {
    let units = if blocks.whole { blocks.len() } else { labels.len() };
    let flips: Option<u128> = if kind.flips() {
        if units < 127 {
            Some(1u128 << units)
        } else {
            None
        }
    } else {
        Some(1)
    };
    let perms: Option<u128> = if kind.permutes() { blocks.count_relabelings(labels) } else { Some(1) };
    flips?.checked_mul(perms?)
}

/// N! / prod(count_l!) for the label multiset, or None on overflow.
pub(super) fn multinomial(labels: &[u32]) -> Option<u128> {
    let mut counts: std::collections::BTreeMap<u32, u128> = Default::default();
    let mut result: u128 = 1;
    // Incremental product of binomials keeps intermediates exact: after adding the k-th
    // element of a label seen c times before, result *= k / (c+1).
    for (k, &l) in labels.iter().enumerate() {
        let c = counts.entry(l).or_insert(0);
        *c += 1;
        result = result.checked_mul((k + 1) as u128)?;
        result /= *c;
    }
    Some(result)
}

/// All distinct orderings of the label multiset, each returned as row sources `src` (src[m]
/// = the original row placed at m), in lexicographic order of labels; the identity first.
pub(super) fn multiset_permutations(labels: &[u32]) -> Vec<Vec<u32>> {
    let n = labels.len();
    // Rows grouped by label, in original order; a relabeling assigns to each position m a
    // label, and rows of that label are taken in their original order.
    let mut seq: Vec<u32> = labels.to_vec();
    let mut out = Vec::new();
    let to_src = |seq: &[u32]| -> Vec<u32> {
        let mut next: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
        for (i, &l) in labels.iter().enumerate().rev() {
            next.entry(l).or_default().push(i as u32);
        }
        seq.iter().map(|l| next.get_mut(l).unwrap().pop().unwrap()).collect()
    };
    // Start from the identity, then walk every other arrangement: sorted order first via
    // next_permutation cycling (which visits every arrangement exactly once).
    let start = seq.clone();
    out.push(to_src(&seq));
    loop {
        if !next_permutation(&mut seq) {
            seq.sort();
        }
        if seq == start {
            break;
        }
        out.push(to_src(&seq));
        if n == 0 {
            break;
        }
    }
    out
}

fn next_permutation<T: Ord>(v: &mut [T]) -> bool {
    let n = v.len();
    if n < 2 {
        return false;
    }
    let mut i = n - 1;
    while i > 0 && v[i - 1] >= v[i] {
        i -= 1;
    }
    if i == 0 {
        v.reverse();
        return false;
    }
    let mut j = n - 1;
    while v[j] <= v[i - 1] {
        j -= 1;
    }
    v.swap(i - 1, j);
    v[i..].reverse();
    true
}
