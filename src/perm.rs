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
use std::collections::HashSet;

/// Which transformations of the data are exchangeable under the null.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
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
        if self.words_per_perm == 0 {
            self.src.len() / self.n.max(1)
        } else {
            self.flip_words.len() / self.words_per_perm
        }
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

    /// Build the set. `labels`: for permutations, rows with equal labels are interchangeable
    /// (identical rows of the design), so only distinct relabelings count. `requested`: the
    /// number of permutations asked for (0 = all). Exhaustive when the number of distinct
    /// transformations is at most `requested` (or requested == 0 and it is enumerable).
    pub fn generate(n: usize, kind: PermKind, labels: &[u32], requested: usize, seed: u64) -> Result<PermSet, String> {
        assert_eq!(labels.len(), n);
        let words_per_perm = if kind.flips() { n.div_ceil(32) } else { 0 };
        let distinct = count_distinct(n, kind, labels);
        let exhaustive = match distinct {
            Some(d) => requested == 0 || d <= requested as u128,
            None => false,
        };
        if requested == 0 && !exhaustive {
            return Err(format!(
                "-n 0 asks for every permutation, but there are more than 2^128 (N = {n}); give a number instead"
            ));
        }
        if exhaustive && distinct.unwrap() > 10_000_000 {
            return Err(format!(
                "exhaustive enumeration would need {} permutations; ask for fewer with -n",
                distinct.unwrap()
            ));
        }
        let mut set = PermSet { n, kind, exhaustive, words_per_perm, flip_words: Vec::new(), src: Vec::new() };
        if exhaustive {
            set.enumerate_all(labels);
        } else {
            set.draw_random(labels, requested, seed);
        }
        Ok(set)
    }

    fn push(&mut self, flips: &[u32], src: Option<&[u32]>) {
        self.flip_words.extend_from_slice(flips);
        if let Some(s) = src {
            self.src.extend_from_slice(s);
        }
    }

    fn enumerate_all(&mut self, labels: &[u32]) {
        let n = self.n;
        let relabelings: Vec<Vec<u32>> = if self.kind.permutes() {
            multiset_permutations(labels)
        } else {
            vec![(0..n as u32).collect()]
        };
        let nflip: u64 = if self.kind.flips() { 1u64 << n } else { 1 };
        let wpp = self.words_per_perm;
        for src in &relabelings {
            for f in 0..nflip {
                let mut words = vec![0u32; wpp];
                for m in 0..n {
                    if (f >> m) & 1 == 1 {
                        words[m / 32] |= 1 << (m % 32);
                    }
                }
                let s = if self.kind.permutes() { Some(src.as_slice()) } else { None };
                self.push(&words, s);
            }
        }
    }

    fn draw_random(&mut self, labels: &[u32], requested: usize, seed: u64) {
        let n = self.n;
        let wpp = self.words_per_perm;
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let identity: Vec<u32> = (0..n as u32).collect();
        let mut seen: HashSet<(Vec<u32>, Vec<u32>)> = HashSet::new();
        // Keys compare the *effective* transformation: for relabelings the label sequence,
        // so that exchanging two identical rows does not count as a new permutation.
        let key_of = |words: &[u32], src: &[u32]| -> (Vec<u32>, Vec<u32>) {
            let lab: Vec<u32> = if src.is_empty() { Vec::new() } else { src.iter().map(|&s| labels[s as usize]).collect() };
            (words.to_vec(), lab)
        };
        let id_words = vec![0u32; wpp];
        let id_src: Vec<u32> = if self.kind.permutes() { identity.clone() } else { Vec::new() };
        seen.insert(key_of(&id_words, &id_src));
        self.push(&id_words, if self.kind.permutes() { Some(&identity) } else { None });
        let mut order = identity.clone();
        while self.len() < requested {
            let mut words = vec![0u32; wpp];
            if self.kind.flips() {
                for w in words.iter_mut() {
                    *w = rng.random::<u32>();
                }
                if n % 32 != 0 {
                    let last = wpp - 1;
                    words[last] &= (1u32 << (n % 32)) - 1;
                }
            }
            let src: Vec<u32> = if self.kind.permutes() {
                order.shuffle(&mut rng);
                order.clone()
            } else {
                Vec::new()
            };
            // A sign pattern s applied to P E negates rows i; in the coefficient form the bit
            // belongs to row m = pi(i), i.e. sign_j(m) = s[src[m]]. Drawing the bits directly
            // per m gives the same distribution, so no remapping is needed.
            if seen.insert(key_of(&words, &src)) {
                self.push(&words, if self.kind.permutes() { Some(&src) } else { None });
            }
        }
    }
}

/// Number of distinct transformations, or None if it exceeds u128.
pub fn count_distinct(n: usize, kind: PermKind, labels: &[u32]) -> Option<u128> {
    let flips: Option<u128> = if kind.flips() { if n < 127 { Some(1u128 << n) } else { None } } else { Some(1) };
    let perms: Option<u128> = if kind.permutes() { multinomial(labels) } else { Some(1) };
    flips?.checked_mul(perms?)
}

/// N! / prod(count_l!) for the label multiset, or None on overflow.
fn multinomial(labels: &[u32]) -> Option<u128> {
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
fn multiset_permutations(labels: &[u32]) -> Vec<Vec<u32>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multinomial_counts() {
        assert_eq!(multinomial(&[0, 0, 1, 1, 1]), Some(10));
        assert_eq!(multinomial(&[0, 1, 2, 3]), Some(24));
        assert_eq!(multiset_permutations(&[0, 0, 1, 1, 1]).len(), 10);
        assert_eq!(multiset_permutations(&[1, 0, 2]).len(), 6);
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
}
