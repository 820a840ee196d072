//! CPU port of `shader/glm_stat_table.wgsl`, the table-driven product for sign flips.
//!
//! Same buffers as the shader's bindings (those of [`super::glm_stat`]) and `bits`, the
//! shader's `BITS` pipeline constant. Each u_k is the shader's sum, operation for operation:
//! for each block of `bits` rows (the last padded with zero rows), the table entry of the
//! permutation's sign code, built from w = Q[m][k] * E[m][v] (one rounding) summed from the
//! block's last row down to its first; a code whose top bit is set reads its complement's
//! entry negated (exactly the sum with the signs flipped, rounding being symmetric); the
//! entries added block by block from 0. So this port equals the shader bit for bit in u;
//! the statistic then differs only by the driver's `/`, `sqrt` and contraction of the
//! epilogue, as for glm_stat.
//!
//! Against the matrix product ([`super::glm_stat`], fused multiply-adds in row order) u
//! differs by rounding only: each entry is a sum of `bits` rounded products, and the blocks
//! add in a chain, so u is a sum of N rounded terms in a tree of depth at most
//! bits + N/bits <= N + 1, and |û - u| <= γ_{N+1} Σ_m |Q_mk E_mv| (γ_n = nε/(1 - nε),
//! ε = 2^-24) for either path (tested in this module against an f64 sum).
use super::glm_stat::kind_of;
use crate::glm_stat::{GlmParams, FLAG_MAPS, FLAG_OBSERVED};
use crate::keys::key_of;
use voxflip_stats::{statistic_of_sums, StatKind};

/// w_k(m) at voxel v of the chunk: 0 past row n (the padding rows).
fn w_at(params: &GlmParams, qbasis: &[f32], e: &[f32], m: usize, v: usize, k: usize) -> f32 {
    let (n, q, vc) = (params.n as usize, params.q as usize, params.vc as usize);
    if m < n {
        qbasis[m * q + k] * e[m * vc + v]
    } else {
        0.0
    }
}

/// The sign bits of rows m0 .. m0 + bits of permutation gp (bit r: row m0 + r negated),
/// bits past row n cleared.
pub fn block_code(params: &GlmParams, perm_words: &[u32], bits: usize, gp: usize, m0: usize) -> u32 {
    let (n, wpp) = (params.n as usize, params.wpp as usize);
    let mut c = 0u32;
    for r in 0..bits.min(n.saturating_sub(m0)) {
        let m = m0 + r;
        c |= ((perm_words[gp * wpp + m / 32] >> (m % 32)) & 1) << r;
    }
    c
}

/// The table entry of code `c` (top bit clear) for the block starting at row m0: the
/// block's `bits` terms summed from its last row down to its first.
#[allow(clippy::too_many_arguments)]
fn entry(params: &GlmParams, qbasis: &[f32], e: &[f32], bits: usize, m0: usize, c: u32, v: usize, k: usize) -> f32 {
    let mut x = w_at(params, qbasis, e, m0 + bits - 1, v, k);
    for i in 1..bits {
        let row = bits - 1 - i;
        let w = w_at(params, qbasis, e, m0 + row, v, k);
        x += if (c >> row) & 1 != 0 { -w } else { w };
    }
    x
}

/// u_k of permutation `gp` of the batch at voxel `v` of the chunk, as the shader sums it.
#[allow(clippy::too_many_arguments)]
pub fn coefficient_sum(
    params: &GlmParams,
    bits: u32,
    perm_words: &[u32],
    qbasis: &[f32],
    e: &[f32],
    gp: usize,
    v: usize,
    k: usize,
) -> f32 {
    let bits = bits as usize;
    let half = (1u32 << (bits - 1)) - 1;
    let mut acc = 0.0f32;
    for m0 in (0..params.n as usize).step_by(bits) {
        let c = block_code(params, perm_words, bits, gp, m0);
        let top = (c >> (bits - 1)) & 1 != 0;
        let t = entry(params, qbasis, e, bits, m0, if top { !c & half } else { c & half }, v, k);
        acc += if top { -t } else { t };
    }
    acc
}

/// The statistic of permutation `gp` at voxel `v`: u_k by [`coefficient_sum`], folded into
/// |u|^2 and aux in the order k = 0..q, then the one formula.
#[allow(clippy::too_many_arguments)]
pub fn statistic_at(
    params: &GlmParams,
    bits: u32,
    perm_words: &[u32],
    qbasis: &[f32],
    e: &[f32],
    vox: &[f32],
    gp: usize,
    v: usize,
) -> f32 {
    let (q, s) = (params.q as usize, params.s as usize);
    let kind = kind_of(params);
    let (mut usq, mut aux) = (0.0f32, 0.0f32);
    for k in 0..q {
        let u = coefficient_sum(params, bits, perm_words, qbasis, e, gp, v, k);
        usq += u * u;
        match kind {
            StatKind::T if k == 0 => aux = u,
            StatKind::F if k < s => aux += u * u,
            _ => {}
        }
    }
    statistic_of_sums(kind, usq, aux, vox[v], params.dof, params.inv_s)
}

/// Run the stage on the CPU with blocks of `bits` rows. `maps` may be empty when
/// `FLAG_MAPS` is not set.
#[allow(clippy::too_many_arguments)]
pub fn glm_stat_table(
    params: &GlmParams,
    bits: u32,
    perm_words: &[u32],
    qbasis: &[f32],
    e: &[f32],
    vox: &[f32],
    max_bits: &mut [u32],
    counts: &mut [u32],
    maps: &mut [f32],
) {
    let vc = params.vc as usize;
    let has_obs = params.flags & FLAG_OBSERVED != 0;
    let write_maps = params.flags & FLAG_MAPS != 0;
    for p in 0..params.n_perm as usize {
        let gp = params.perm_offset as usize + p;
        let mut best = 0u32;
        for v in 0..vc {
            let t = statistic_at(params, bits, perm_words, qbasis, e, vox, gp, v);
            if write_maps {
                maps[(gp - params.maps_base as usize) * vc + v] = t;
            }
            best = best.max(key_of(t));
            if has_obs && t >= vox[vc + v] {
                counts[v] += 1;
            }
        }
        max_bits[gp] = max_bits[gp].max(best);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::glm_stat::KIND_T;
    use crate::glm_stat_table::MAX_BITS;

    /// A deterministic generator (the crate has no rand dependency).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u32 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
        fn unit(&mut self) -> f32 {
            self.next() as f32 / (1u64 << 31) as f32 - 0.5
        }
    }

    fn case(n: usize, vc: usize, q: usize, perms: usize, seed: u64) -> (GlmParams, Vec<u32>, Vec<f32>, Vec<f32>) {
        let mut g = Lcg(seed);
        let wpp = n.div_ceil(32);
        let words: Vec<u32> = (0..perms * wpp).map(|_| g.next() ^ (g.next() << 16)).collect();
        let qb: Vec<f32> = (0..n * q).map(|_| g.unit()).collect();
        let e: Vec<f32> = (0..n * vc).map(|_| g.unit() * 3.0).collect();
        let params = GlmParams {
            n: n as u32,
            q: q as u32,
            s: 1,
            kind: KIND_T,
            vc: vc as u32,
            n_perm: perms as u32,
            wpp: wpp as u32,
            dof: (n - q) as f32,
            inv_s: 1.0,
            ..Default::default()
        };
        (params, words, qb, e)
    }

    #[test]
    fn table_sums_are_within_the_rounding_bound_of_the_exact_sum() {
        // The f64 sum of the f32 products is exact to far below the bound (N <= 100 terms,
        // each with 53-bit precision), so it stands in for u.
        for &(n, q) in &[(1usize, 1usize), (7, 2), (31, 1), (33, 3), (58, 2), (100, 6)] {
            let (params, words, qb, e) = case(n, 5, q, 6, n as u64);
            for bits in 1..=MAX_BITS {
                for gp in 0..6 {
                    for v in 0..5 {
                        for k in 0..q {
                            let (mut exact, mut abs) = (0.0f64, 0.0f64);
                            for m in 0..n {
                                let neg = (words[gp * params.wpp as usize + m / 32] >> (m % 32)) & 1 != 0;
                                let t = qb[m * q + k] as f64 * e[m * 5 + v] as f64;
                                exact += if neg { -t } else { t };
                                abs += t.abs();
                            }
                            let eps = f32::EPSILON as f64 / 2.0;
                            let gamma = (n + 1) as f64 * eps / (1.0 - (n + 1) as f64 * eps);
                            let got = coefficient_sum(&params, bits, &words, &qb, &e, gp, v, k) as f64;
                            assert!(
                                (got - exact).abs() <= gamma * abs,
                                "n {n} bits {bits} perm {gp} voxel {v} k {k}: {got} vs {exact} (bound {})",
                                gamma * abs
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn codes_read_the_sign_bits_across_words() {
        let params = GlmParams { n: 40, wpp: 2, ..Default::default() };
        // Rows 30..36 of permutation 1: bits 30, 31 of word 2 and 0..4 of word 3.
        let words = [0, 0, 0b10u32 << 30, 0b10110];
        assert_eq!(block_code(&params, &words, 7, 1, 30), 0b1011010);
        // Rows past n are cleared: rows 38..40 exist, 40..45 do not.
        let words = [0, 0, 0, u32::MAX];
        assert_eq!(block_code(&params, &words, 7, 1, 38), 0b11);
    }
}
