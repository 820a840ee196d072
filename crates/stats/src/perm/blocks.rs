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
    /// Exchange whole blocks rather than rows within blocks.
    pub whole: bool,
}

impl Blocks {
    /// Every row in one block: no restriction.
    pub fn single(n: usize) -> Blocks {
        Blocks { members: vec![(0..n as u32).collect()], of_row: vec![0; n], whole: false }
    }

    /// Blocks from one label per row (equal labels = same block, any integers). Whole-block
    /// exchange needs every block to have the same number of rows.
    pub fn from_labels(labels: &[i64], whole: bool) -> Result<Blocks, String> {
        let mut ids: Vec<i64> = Vec::new();
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
        Ok(Blocks { members, of_row, whole })
    }

    /// The same blocks with each of `rows` taken out into a block of its own, so that it is
    /// never exchanged (randomise --detectNull). Only for exchange within blocks.
    pub fn fixing(&self, rows: &[usize]) -> Blocks {
        assert!(!self.whole, "rows are fixed only under exchange within blocks");
        let mut labels: Vec<i64> = self.of_row.iter().map(|&b| b as i64).collect();
        for &r in rows {
            labels[r] = -1 - r as i64;
        }
        Blocks::from_labels(&labels, false).expect("within-block exchange takes any blocks")
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
        // Within blocks: the product of each block's distinct orderings, odometer style
        // (all-first = the identity comes first).
        let per_block: Vec<Vec<Vec<u32>>> = self
            .members
            .iter()
            .map(|rows| {
                let l: Vec<u32> = rows.iter().map(|&r| labels[r as usize]).collect();
                multiset_permutations(&l)
                    .into_iter()
                    .map(|local| local.iter().map(|&k| rows[k as usize]).collect())
                    .collect()
            })
            .collect();
        let mut digit = vec![0usize; per_block.len()];
        loop {
            let orders: Vec<Vec<u32>> = digit.iter().zip(&per_block).map(|(&d, o)| o[d].clone()).collect();
            self.fill_src(&orders, &mut src);
            out.push(src.clone());
            let mut b = 0;
            loop {
                if b == digit.len() {
                    return out;
                }
                digit[b] += 1;
                if digit[b] < per_block[b].len() {
                    break;
                }
                digit[b] = 0;
                b += 1;
            }
        }
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

fn next_permutation(v: &mut [u32]) -> bool {
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
