//! CPU port of `shader/glm_stat_wide.wgsl` (the `Wide` and `Wide128` kernels), walking the
//! shader's tiles rather than the flat loops of [`super::glm_stat`].
//!
//! A workgroup of `WG_V x wg_p` invocations owns `TP = wg_p * RP` permutations by `TV`
//! voxels; invocation (tx, ty) holds the 8 x 4 register block of permutations
//! `p0 + 4 ty + i` and `p0 + 4 (ty + wg_p) + i` (i < 4) by voxels `v0 + 4 tx + c` (c < 4).
//! Each u_k is the sum over the rows in order of fused multiply-adds (the shader's slices of
//! KT rows add the same terms in the same order), folded into |u|^2 and aux as the shader
//! folds it; the per-permutation maxima and the per-voxel counts are combined within the
//! tile first (the shader's `wg_max` and `wg_cnt`), then into the batch's. Same buffers as
//! the shader's bindings; the result equals [`super::glm_stat::glm_stat`] exactly (a test
//! holds them together, and the GPU tests hold the shader against this port).
use super::glm_stat::statistic_at;
use crate::glm_stat::wide::{RP, RV, TV, WG_V};
use crate::glm_stat::{GlmParams, FLAG_MAPS, FLAG_OBSERVED};
use crate::keys::key_of;

/// Run the stage on the CPU with `wg_p` invocations along permutations (16: `Wide`, 8:
/// `Wide128`). `maps` may be empty when `FLAG_MAPS` is not set.
#[allow(clippy::too_many_arguments)]
pub fn glm_stat_wide(
    wg_p: u32,
    params: &GlmParams,
    perm_words: &[u32],
    qbasis: &[f32],
    e: &[f32],
    vox: &[f32],
    max_bits: &mut [u32],
    counts: &mut [u32],
    maps: &mut [f32],
) {
    let vc = params.vc as usize;
    let n_perm = params.n_perm as usize;
    let (wg_p, rp, rv, tv) = (wg_p as usize, RP as usize, RV as usize, TV as usize);
    let tp = wg_p * rp;
    let has_obs = params.flags & FLAG_OBSERVED != 0;
    let write_maps = params.flags & FLAG_MAPS != 0;
    for p0 in (0..n_perm).step_by(tp) {
        for v0 in (0..vc).step_by(tv) {
            let mut wg_max = vec![0u32; tp];
            let mut wg_cnt = vec![0u32; tv];
            for ty in 0..wg_p {
                for tx in 0..WG_V as usize {
                    // The block's permutation slots (acc0..acc3, acc4..acc7) and voxels.
                    let slots = (0..4).map(|i| 4 * ty + i).chain((0..4).map(|i| 4 * (ty + wg_p) + i));
                    for pp in slots {
                        let p = p0 + pp;
                        if p >= n_perm {
                            continue;
                        }
                        let gp = params.perm_offset as usize + p;
                        for c in 0..rv {
                            let v = v0 + 4 * tx + c;
                            if v >= vc {
                                continue;
                            }
                            let t = statistic_at(params, perm_words, qbasis, e, vox, gp, v);
                            if write_maps {
                                maps[(gp - params.maps_base as usize) * vc + v] = t;
                            }
                            wg_max[pp] = wg_max[pp].max(key_of(t));
                            if has_obs && t >= vox[vc + v] {
                                wg_cnt[v - v0] += 1;
                            }
                        }
                    }
                }
            }
            for (pp, &k) in wg_max.iter().enumerate() {
                let p = p0 + pp;
                if p < n_perm {
                    let gp = params.perm_offset as usize + p;
                    max_bits[gp] = max_bits[gp].max(k);
                }
            }
            if has_obs {
                for (vv, &c) in wg_cnt.iter().enumerate() {
                    if v0 + vv < vc {
                        counts[v0 + vv] += c;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::glm_stat::glm_stat;
    use super::*;
    use crate::glm_stat::wide::{WG_P, WG_P_128};
    use crate::glm_stat::{FLAG_SRC, KIND_F};

    /// The stage's outputs: maxima, counts, maps.
    type Outputs = (Vec<u32>, Vec<u32>, Vec<f32>);

    /// A small deterministic generator (the crate has no rand dependency).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f32 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        }
        fn word(&mut self) -> u32 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 32) as u32
        }
    }

    /// Both ports give the same bits, over several tiles with partial last ones (permutations
    /// and voxels), t and F, sign flips and row sources, an offset dispatch.
    #[test]
    fn wide_port_equals_the_flat_port() {
        let mut rng = Lcg(7);
        for (n, q, s, vc, n_perm, kind, src) in [
            (13usize, 2usize, 1usize, 70usize, 140usize, 0u32, false),
            (40, 3, 2, 129, 65, KIND_F, true),
            (1, 1, 1, 5, 3, 0, true),
        ] {
            let total = n_perm + 5;
            let wpp = n.div_ceil(32);
            let mut words: Vec<u32> = (0..total * wpp).map(|_| rng.word()).collect();
            let src_base = words.len() as u32;
            if src {
                for _ in 0..total {
                    let mut order: Vec<u32> = (0..n as u32).collect();
                    for i in (1..n).rev() {
                        order.swap(i, rng.word() as usize % (i + 1));
                    }
                    words.extend(order);
                }
            }
            let qbasis: Vec<f32> = (0..n * q).map(|_| rng.next()).collect();
            let e: Vec<f32> = (0..n * vc).map(|_| rng.next()).collect();
            let mut vox: Vec<f32> = (0..vc).map(|_| 2.0 + rng.next()).collect();
            vox.extend((0..vc).map(|_| rng.next()));
            let params = GlmParams {
                n: n as u32,
                q: q as u32,
                s: s as u32,
                kind,
                vc: vc as u32,
                n_perm: n_perm as u32,
                perm_offset: 5,
                wpp: wpp as u32,
                src_base,
                flags: FLAG_MAPS | FLAG_OBSERVED | if src { FLAG_SRC } else { 0 },
                maps_base: 5,
                dof: (n.max(q + 1) - q) as f32,
                inv_s: GlmParams::inv_s_of(s as u32),
                ..Default::default()
            };
            let run = |f: &dyn Fn(&mut Outputs)| -> Outputs {
                let mut out = (vec![3u32; total], vec![1u32; vc], vec![0f32; n_perm * vc]);
                f(&mut out);
                out
            };
            let flat = run(&|(mx, cnt, maps)| glm_stat(&params, &words, &qbasis, &e, &vox, mx, cnt, maps));
            for wg_p in [WG_P, WG_P_128] {
                let wide =
                    run(&|(mx, cnt, maps)| glm_stat_wide(wg_p, &params, &words, &qbasis, &e, &vox, mx, cnt, maps));
                assert_eq!(wide.0, flat.0, "maxima, wg_p {wg_p}");
                assert_eq!(wide.1, flat.1, "counts, wg_p {wg_p}");
                let same = wide.2.iter().zip(&flat.2).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "maps, wg_p {wg_p}");
            }
            assert!(flat.1.iter().any(|&c| c > 1), "some exceedances were counted");
        }
    }
}
