//! The permutation set: seeded, shared by every engine, independent of batch size and shards.
//!
//! Each permutation j acts on the N rows of the residual matrix E as
//! `(P_j E)[i] = s_j[i] * E[pi_j[i]]` (a sign flip and/or a reordering; both orthogonal).
//! Engines do not use P_j directly: they need the coefficient rows of `Q' P_j`, which are
//! `A_j[k][m] = sign_j(m) * Q[src_j[m]][k]` with `src_j = pi_j^{-1}` and
//! `sign_j(m) = s_j[src_j[m]]`. [`PermSet`] stores exactly that form: for each permutation a
//! packed bit per row m (bit set = negate) and, when rows are exchanged, `src_j`.
//! Permutation 0 is always the identity.
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::hash::{Hash, Hasher};

mod blocks;
mod plan;

pub use blocks::{count_distinct, count_distinct_in_blocks, ln_count_distinct_in_blocks, Blocks};
pub use plan::{SetPlan, DEDUP_BYTES, MAX_EXHAUSTIVE};

/// Which transformations of the data are exchangeable under the null.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PermKind {
    /// Independent and symmetric errors: flip signs of rows (randomise -1).
    SignFlip,
    /// Exchangeable errors: reorder rows (randomise default).
    Permute,
    /// Both (PALM -ee -ise).
    Both,
}

impl PermKind {
    pub fn flips(self) -> bool {
        matches!(self, PermKind::SignFlip | PermKind::Both)
    }
    pub fn permutes(self) -> bool {
        matches!(self, PermKind::Permute | PermKind::Both)
    }
    /// What is exchanged, in words, plural: "sign flips", "permutations", ...
    pub fn words(self) -> &'static str {
        match self {
            PermKind::SignFlip => "sign flips",
            PermKind::Permute => "permutations",
            PermKind::Both => "permutations with sign flips",
        }
    }
}

/// A fixed, seeded set of permutations (index 0 = identity).
#[derive(Clone, Debug)]
pub struct PermSet {
    pub n: usize,
    pub kind: PermKind,
    /// True when the set is every distinct transformation (exhaustive enumeration).
    pub exhaustive: bool,
    /// u32 words per permutation in `flip_words`.
    pub words_per_perm: usize,
    /// Packed sign bits: bit (m % 32) of word m / 32 of permutation j = negate row m.
    flip_words: Vec<u32>,
    /// Row sources (N per permutation) when rows are exchanged; empty for pure sign flips.
    src: Vec<u32>,
}

impl PermSet {
    pub fn len(&self) -> usize {
        // Sign words if there are any, else row sources.
        self.flip_words.len().checked_div(self.words_per_perm).unwrap_or(self.src.len() / self.n.max(1))
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Packed sign words of permutation j (`words_per_perm` of them).
    pub fn flip_words(&self, j: usize) -> &[u32] {
        &self.flip_words[j * self.words_per_perm..(j + 1) * self.words_per_perm]
    }
    /// All packed sign words, permutation-major.
    pub fn all_flip_words(&self) -> &[u32] {
        &self.flip_words
    }
    /// Row sources of permutation j, or None when rows are not exchanged (identity).
    pub fn src(&self, j: usize) -> Option<&[u32]> {
        if self.src.is_empty() {
            None
        } else {
            Some(&self.src[j * self.n..(j + 1) * self.n])
        }
    }
    /// All row sources, permutation-major (empty for pure sign flips).
    pub fn all_src(&self) -> &[u32] {
        &self.src
    }
    /// Whether row m is negated in permutation j.
    pub fn negated(&self, j: usize, m: usize) -> bool {
        self.words_per_perm > 0 && (self.flip_words(j)[m / 32] >> (m % 32)) & 1 == 1
    }
    /// The sign (+1/-1) applied to row m in permutation j.
    pub fn sign(&self, j: usize, m: usize) -> f32 {
        if self.negated(j, m) {
            -1.0
        } else {
            1.0
        }
    }
    /// Row source of row m in permutation j.
    pub fn source(&self, j: usize, m: usize) -> usize {
        match self.src(j) {
            Some(s) => s[m] as usize,
            None => m,
        }
    }
    /// Fill `a` (q x n, row-major) with the coefficient rows A_j = Q' P_j for permutation j,
    /// given `qbasis` (n x q, row-major).
    pub fn coefficient_rows(&self, j: usize, qbasis: &[f32], q: usize, a: &mut [f32]) {
        let n = self.n;
        for m in 0..n {
            let src = self.source(j, m);
            let sgn = self.sign(j, m);
            for k in 0..q {
                a[k * n + m] = sgn * qbasis[src * q + k];
            }
        }
    }

    /// Build the set with every row exchangeable with every other (one block). `labels`: for
    /// permutations, rows with equal labels are interchangeable (identical rows of the
    /// design), so only distinct relabelings count. `requested`: the number of permutations
    /// asked for (0 = all). Exhaustive when the number of distinct transformations is at most
    /// `requested` (or requested == 0 and it is enumerable).
    pub fn generate(n: usize, kind: PermKind, labels: &[u32], requested: usize, seed: u64) -> Result<PermSet, String> {
        PermSet::generate_in_blocks(n, kind, labels, &Blocks::single(n), requested, seed)
    }

    /// Build the set under exchangeability blocks (randomise -e, --permuteBlocks): rows are
    /// reordered only within their block, or whole blocks are reordered (and sign-flipped)
    /// as units. With [`Blocks::single`] this is [`PermSet::generate`], draw for draw.
    pub fn generate_in_blocks(
        n: usize,
        kind: PermKind,
        labels: &[u32],
        blocks: &Blocks,
        requested: usize,
        seed: u64,
    ) -> Result<PermSet, String> {
        let plan = SetPlan::new(n, kind, labels, blocks, requested)?;
        let words_per_perm = if kind.flips() { n.div_ceil(32) } else { 0 };
        let mut set =
            PermSet { n, kind, exhaustive: plan.exhaustive, words_per_perm, flip_words: Vec::new(), src: Vec::new() };
        // Reserved up front: the set's size is known, and growing by doubling would
        // transiently need half as much again.
        set.flip_words.reserve_exact(plan.len * words_per_perm);
        set.src.reserve_exact(if kind.permutes() { plan.len * n } else { 0 });
        if plan.exhaustive {
            set.enumerate_all(labels, blocks);
        } else {
            set.draw_random(labels, blocks, requested, seed);
        }
        Ok(set)
    }

    fn push(&mut self, flips: &[u32], src: Option<&[u32]>) {
        self.flip_words.extend_from_slice(flips);
        if let Some(s) = src {
            self.src.extend_from_slice(s);
        }
    }

    fn enumerate_all(&mut self, labels: &[u32], blocks: &Blocks) {
        let n = self.n;
        let relabelings: Vec<Vec<u32>> =
            if self.kind.permutes() { blocks.relabelings(labels) } else { vec![(0..n as u32).collect()] };
        // Sign patterns over the units that flip together: rows, or whole blocks.
        let units = if blocks.whole { blocks.len() } else { n };
        let nflip: u64 = if self.kind.flips() { 1u64 << units } else { 1 };
        // randomise's order: its sign vector counts down from all +1 like an odometer whose
        // last unit turns fastest (rows in order; whole blocks by block id), so unit u is
        // negated in flip f when bit (units - 1 - position of u) of f is set.
        let bit_of_unit: Vec<u32> = if blocks.whole {
            let mut bit = vec![0u32; units];
            for (pos, b) in blocks.walk_order().into_iter().enumerate() {
                bit[b] = (units - 1 - pos) as u32;
            }
            bit
        } else {
            (0..units).map(|u| (units - 1 - u) as u32).collect()
        };
        let wpp = self.words_per_perm;
        for src in &relabelings {
            for f in 0..nflip {
                let mut words = vec![0u32; wpp];
                for m in 0..n {
                    let unit = if blocks.whole { blocks.of_row[m] as usize } else { m };
                    if (f >> bit_of_unit[unit]) & 1 == 1 {
                        words[m / 32] |= 1 << (m % 32);
                    }
                }
                let s = if self.kind.permutes() { Some(src.as_slice()) } else { None };
                self.push(&words, s);
            }
        }
    }

    /// The hash of a transformation's effective form: its sign words and, for relabelings,
    /// the label sequence it produces (so that exchanging two identical rows is no new
    /// permutation).
    fn key_hash(words: &[u32], src: &[u32], labels: &[u32]) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        words.hash(&mut h);
        for &s in src {
            labels[s as usize].hash(&mut h);
        }
        h.finish()
    }

    /// Whether stored permutation j has the effective form of (`words`, `src`).
    fn same_key(&self, j: usize, words: &[u32], src: &[u32], labels: &[u32]) -> bool {
        self.flip_words(j) == words
            && self
                .src(j)
                .is_none_or(|stored| stored.iter().zip(src).all(|(&a, &b)| labels[a as usize] == labels[b as usize]))
    }

    fn draw_random(&mut self, labels: &[u32], blocks: &Blocks, requested: usize, seed: u64) {
        let n = self.n;
        let wpp = self.words_per_perm;
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let identity: Vec<u32> = (0..n as u32).collect();
        // The permutations drawn so far, by index into the set (compared through the stored
        // vectors): DEDUP_BYTES a permutation at most instead of a copy of each.
        let mut seen: hashbrown::HashTable<u32> = hashbrown::HashTable::with_capacity(requested);
        let id_words = vec![0u32; wpp];
        let id_src: &[u32] = if self.kind.permutes() { &identity } else { &[] };
        seen.insert_unique(Self::key_hash(&id_words, id_src, labels), 0, |_| unreachable!("reserved"));
        self.push(&id_words, if self.kind.permutes() { Some(&identity) } else { None });
        // What is shuffled, kept from draw to draw: each block's rows (within blocks), or the
        // order of the blocks (whole blocks).
        let mut orders: Vec<Vec<u32>> =
            if blocks.whole { vec![(0..blocks.len() as u32).collect()] } else { blocks.members.clone() };
        let mut src = identity.clone();
        let nb = blocks.len();
        let mut block_words = vec![0u32; nb.div_ceil(32)];
        let mut words = vec![0u32; wpp];
        while self.len() < requested {
            words.fill(0);
            if self.kind.flips() {
                // One random bit per unit that flips: per row, or per block (spread to its rows).
                let bits: &mut [u32] = if blocks.whole { &mut block_words } else { &mut words };
                let units = if blocks.whole { nb } else { n };
                for w in bits.iter_mut() {
                    *w = rng.random::<u32>();
                }
                if units % 32 != 0 {
                    let last = bits.len() - 1;
                    bits[last] &= (1u32 << (units % 32)) - 1;
                }
                if blocks.whole {
                    for m in 0..n {
                        let b = blocks.of_row[m] as usize;
                        if (block_words[b / 32] >> (b % 32)) & 1 == 1 {
                            words[m / 32] |= 1 << (m % 32);
                        }
                    }
                }
            }
            if self.kind.permutes() {
                for o in orders.iter_mut() {
                    o.shuffle(&mut rng);
                }
                blocks.fill_src(&orders, &mut src);
            }
            // A sign pattern s applied to P E negates rows i; in the coefficient form the bit
            // belongs to row m = pi(i), i.e. sign_j(m) = s[src[m]]. Drawing the bits directly
            // per m gives the same distribution (for whole blocks: per destination block,
            // whose rows all come from one source block), so no remapping is needed.
            let s: &[u32] = if self.kind.permutes() { &src } else { &[] };
            let hash = Self::key_hash(&words, s, labels);
            if seen.find(hash, |&j| self.same_key(j as usize, &words, s, labels)).is_none() {
                let j = self.len() as u32;
                self.push(&words, if self.kind.permutes() { Some(&src) } else { None });
                let set = &*self;
                seen.insert_unique(hash, j, |&k| {
                    let k = k as usize;
                    Self::key_hash(set.flip_words(k), set.src(k).unwrap_or(&[]), labels)
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::blocks::{multinomial, multiset_permutations};
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn multinomial_counts() {
        assert_eq!(multinomial(&[0, 0, 1, 1, 1]), Some(10));
        assert_eq!(multinomial(&[0, 1, 2, 3]), Some(24));
        assert_eq!(multiset_permutations(&[0, 0, 1, 1, 1]).len(), 10);
        assert_eq!(multiset_permutations(&[1, 0, 2]).len(), 6);
    }

    #[test]
    fn log_counts_agree_with_exact_counts() {
        let labels = [0, 1, 1, 2, 0, 1, 3, 3];
        for (block_of, whole) in
            [(vec![1i64; 8], false), (vec![1i64, 1, 1, 2, 2, 2, 5, 5], false), (vec![7i64, 7, 3, 3, 9, 9, 4, 4], true)]
        {
            let blocks = Blocks::from_labels(&block_of, whole).unwrap();
            for kind in [PermKind::SignFlip, PermKind::Permute, PermKind::Both] {
                let exact = count_distinct_in_blocks(kind, &labels, &blocks).unwrap() as f64;
                let ln = ln_count_distinct_in_blocks(kind, &labels, &blocks);
                // Sums of at most 8 logarithms: a few ulps of error.
                assert!((ln - exact.ln()).abs() < 1e-12, "{kind:?} {block_of:?}: {ln} vs ln {exact}");
            }
        }
    }

    #[test]
    fn fixed_rows_are_never_moved() {
        let labels: Vec<u32> = (0..8).collect();
        let blocks = Blocks::single(8).fixing(&[2, 5]);
        // 6 rows free, all distinct: 6! relabelings.
        assert_eq!(count_distinct_in_blocks(PermKind::Permute, &labels, &blocks), Some(720));
        let p = PermSet::generate_in_blocks(8, PermKind::Permute, &labels, &blocks, 200, 4).unwrap();
        for j in 0..p.len() {
            assert_eq!((p.source(j, 2), p.source(j, 5)), (2, 5));
        }
        assert!((0..p.len()).any(|j| p.source(j, 0) != 0));
    }

    #[test]
    fn random_relabelings_of_repeated_rows_are_distinct_label_sequences() {
        // 8! / (3! 3! 2!) = 560 distinct relabelings; 300 drawn must be 300 distinct ones.
        let labels = [0, 0, 0, 1, 1, 1, 2, 2];
        let p = PermSet::generate(8, PermKind::Permute, &labels, 300, 11).unwrap();
        assert!(!p.exhaustive);
        let keys: HashSet<Vec<u32>> =
            (0..p.len()).map(|j| p.src(j).unwrap().iter().map(|&s| labels[s as usize]).collect()).collect();
        assert_eq!((p.len(), keys.len()), (300, 300));
    }

    #[test]
    fn exhaustive_sign_flips_are_all_distinct_and_identity_first() {
        let p = PermSet::generate(5, PermKind::SignFlip, &[0; 5], 100, 1).unwrap();
        assert!(p.exhaustive);
        assert_eq!(p.len(), 32);
        assert_eq!(p.flip_words(0), &[0]);
        let set: HashSet<u32> = (0..32).map(|j| p.flip_words(j)[0]).collect();
        assert_eq!(set.len(), 32);
    }

    #[test]
    fn random_set_is_seeded_and_has_no_repeats() {
        let a = PermSet::generate(8, PermKind::SignFlip, &[0; 8], 200, 7).unwrap();
        let b = PermSet::generate(8, PermKind::SignFlip, &[0; 8], 200, 7).unwrap();
        assert!(!a.exhaustive);
        assert_eq!(a.all_flip_words(), b.all_flip_words());
        let set: HashSet<u32> = (0..a.len()).map(|j| a.flip_words(j)[0]).collect();
        assert_eq!(set.len(), 200);
        assert_eq!(a.flip_words(0), &[0]);
    }

    #[test]
    fn relabelings_respect_identical_rows() {
        let labels = [0, 0, 0, 1, 1, 1];
        let p = PermSet::generate(6, PermKind::Permute, &labels, 1000, 3).unwrap();
        assert!(p.exhaustive);
        assert_eq!(p.len(), 20);
        let keys: HashSet<Vec<u32>> =
            (0..p.len()).map(|j| p.src(j).unwrap().iter().map(|&s| labels[s as usize]).collect()).collect();
        assert_eq!(keys.len(), 20);
        assert_eq!(p.src(0).unwrap(), &[0, 1, 2, 3, 4, 5]);
    }

    /// Every permutation of 0..n, as row sources.
    fn all_orderings(n: usize) -> Vec<Vec<u32>> {
        voxflip_testkit::all_orderings(n).into_iter().map(|o| o.into_iter().map(|r| r as u32).collect()).collect()
    }

    /// The brute-force oracle: of all n! orderings, those that respect the blocks, as the
    /// distinct label sequences they produce.
    fn allowed_label_sequences(block_of: &[i64], labels: &[u32], whole: bool) -> HashSet<Vec<u32>> {
        let n = labels.len();
        all_orderings(n)
            .into_iter()
            .filter(|src| {
                if !whole {
                    return (0..n).all(|m| block_of[src[m] as usize] == block_of[m]);
                }
                // Whole blocks: rows of one block all come from one block, in order.
                let rows_of = |b: i64| (0..n).filter(move |&r| block_of[r] == b).collect::<Vec<_>>();
                let mut ok = true;
                for m in 0..n {
                    let dst = rows_of(block_of[m]);
                    let from = rows_of(block_of[src[dst[0]] as usize]);
                    ok &= dst.iter().zip(&from).all(|(&d, &f)| src[d] as usize == f);
                }
                ok
            })
            .map(|src| src.iter().map(|&s| labels[s as usize]).collect())
            .collect()
    }

    #[test]
    fn exhaustive_blocked_relabelings_equal_brute_force() {
        let labels = [0, 1, 1, 2, 0, 1, 3, 3];
        for (block_of, whole) in [
            (vec![1i64, 1, 1, 2, 2, 2, 5, 5], false),
            (vec![7i64, 7, 3, 3, 9, 9, 4, 4], true),
            (vec![1i64, 2, 1, 2, 1, 2, 1, 2], false),
        ] {
            let blocks = Blocks::from_labels(&block_of, whole).unwrap();
            let want = allowed_label_sequences(&block_of, &labels, whole);
            let p = PermSet::generate_in_blocks(8, PermKind::Permute, &labels, &blocks, 100_000, 1).unwrap();
            assert!(p.exhaustive);
            let got: Vec<Vec<u32>> =
                (0..p.len()).map(|j| p.src(j).unwrap().iter().map(|&s| labels[s as usize]).collect()).collect();
            let got_set: HashSet<Vec<u32>> = got.iter().cloned().collect();
            assert_eq!(got.len(), got_set.len(), "repeats in {block_of:?}");
            assert_eq!(got_set, want, "blocks {block_of:?} whole {whole}");
            assert_eq!(p.src(0).unwrap(), &[0, 1, 2, 3, 4, 5, 6, 7]);
            assert!(want.len() > 1 && want.len() < 8 * 7 * 6 * 5 * 4 * 3 * 2);
        }
    }

    #[test]
    fn random_blocked_draws_respect_the_blocks() {
        let n = 40;
        let block_of: Vec<i64> = (0..n).map(|i| (i / 4) as i64).collect();
        let labels: Vec<u32> = (0..n as u32).collect();
        for whole in [false, true] {
            let blocks = Blocks::from_labels(&block_of, whole).unwrap();
            let p = PermSet::generate_in_blocks(n, PermKind::Both, &labels, &blocks, 500, 3).unwrap();
            assert!(!p.exhaustive);
            assert_eq!(p.len(), 500);
            let mut moved_block = false;
            for j in 0..p.len() {
                let src = p.src(j).unwrap();
                for m in 0..n {
                    let s = src[m] as usize;
                    if whole {
                        // Same offset within the block; all rows of a block share a sign.
                        assert_eq!(s % 4, m % 4);
                        assert_eq!(src[m - m % 4] as usize + m % 4, s);
                        assert_eq!(p.sign(j, m), p.sign(j, m - m % 4));
                        moved_block |= s / 4 != m / 4;
                    } else {
                        assert_eq!(block_of[s], block_of[m]);
                    }
                }
            }
            assert!(!whole || moved_block);
            // Signs vary within a block unless blocks flip as wholes.
            let mixed = (1..p.len()).any(|j| (0..n).any(|m| p.sign(j, m) != p.sign(j, m - m % 4)));
            assert_eq!(mixed, !whole);
        }
    }

    #[test]
    fn whole_block_sign_flips_enumerate_two_to_the_blocks() {
        let blocks = Blocks::from_labels(&[1, 1, 1, 2, 2, 2, 3, 3, 3], true).unwrap();
        let p = PermSet::generate_in_blocks(9, PermKind::SignFlip, &[0; 9], &blocks, 1000, 1).unwrap();
        assert!(p.exhaustive);
        assert_eq!(p.len(), 8);
        let words: HashSet<u32> = (0..8).map(|j| p.flip_words(j)[0]).collect();
        assert_eq!(words.len(), 8);
        // Each block's three rows are all negated or none.
        assert!(words.iter().all(|&w| [0o7u32, 0o70, 0o700].iter().all(|&b| w & b == 0 || w & b == b)));
    }

    #[test]
    fn one_block_is_no_restriction_and_unequal_whole_blocks_are_refused() {
        let labels = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5];
        let one = Blocks::from_labels(&[4; 12], false).unwrap();
        let a = PermSet::generate_in_blocks(12, PermKind::Both, &labels, &one, 300, 9).unwrap();
        let b = PermSet::generate(12, PermKind::Both, &labels, 300, 9).unwrap();
        assert_eq!(a.all_src(), b.all_src());
        assert_eq!(a.all_flip_words(), b.all_flip_words());
        let err = Blocks::from_labels(&[1, 1, 2, 2, 2], true).unwrap_err();
        assert!(err.contains("equal size") && err.contains("block 2 has 3"), "{err}");
    }
}
