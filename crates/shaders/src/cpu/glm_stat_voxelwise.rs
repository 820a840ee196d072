//! CPU port of `shader/glm_stat_voxelwise.wgsl`.
//!
//! Same buffers as the shader's bindings (glm_stat's, [`super::glm_stat::glm_stat`]'s
//! signature): `params`, `perm_words` ([sign words | row sources]), `bases` (the chunk's
//! per-voxel bases, (n x q) x vc, `bases[(m * q + k) * vc + v]`), `e` (the chunk, n x vc),
//! `vox` ([ss | observed], 2 vc) in; `max_bits` (combined with max), `counts` (added to) and
//! `maps` out. Each u_k is accumulated over m = 0..n in order with a fused multiply-add, as
//! each shader invocation does, folded into |u|^2 and aux in the order k = 0..q, and turned
//! into the statistic by [`voxflip_stats::statistic_of_sums`] (the shader's `statistic4`).
use super::glm_stat::kind_of;
use crate::glm_stat::{GlmParams, FLAG_MAPS, FLAG_OBSERVED, FLAG_SRC};
use crate::keys::key_of;
use voxflip_stats::{statistic_of_sums, StatKind};

/// The coefficient A_p[k][m][v] = sign_p(m) * Q_v[src_p(m)][k] of permutation `gp` of the
/// batch at voxel `v` of the chunk.
pub fn coefficient(
    params: &GlmParams,
    perm_words: &[u32],
    bases: &[f32],
    gp: usize,
    m: usize,
    k: usize,
    v: usize,
) -> f32 {
    let (n, q, vc, wpp) = (params.n as usize, params.q as usize, params.vc as usize, params.wpp as usize);
    let row = if params.flags & FLAG_SRC != 0 { perm_words[params.src_base as usize + gp * n + m] as usize } else { m };
    let val = bases[(row * q + k) * vc + v];
    if wpp > 0 && (perm_words[gp * wpp + m / 32] >> (m % 32)) & 1 != 0 {
        -val
    } else {
        val
    }
}

/// u_k of permutation `gp` at voxel `v`: the sum over m = 0..n in order of fused
/// multiply-adds, as a shader invocation sums it.
pub fn coefficient_sum(
    params: &GlmParams,
    perm_words: &[u32],
    bases: &[f32],
    e: &[f32],
    gp: usize,
    v: usize,
    k: usize,
) -> f32 {
    let vc = params.vc as usize;
    (0..params.n as usize)
        .fold(0.0f32, |acc, m| coefficient(params, perm_words, bases, gp, m, k, v).mul_add(e[m * vc + v], acc))
}

/// The statistic of permutation `gp` of the batch at voxel `v` of the chunk: the u_k of
/// [`coefficient_sum`] folded into |u|^2 and aux in the order k = 0..q, then the one formula.
pub fn statistic_at(
    params: &GlmParams,
    perm_words: &[u32],
    bases: &[f32],
    e: &[f32],
    vox: &[f32],
    gp: usize,
    v: usize,
) -> f32 {
    let kind = kind_of(params);
    let (mut usq, mut aux) = (0.0f32, 0.0f32);
    for k in 0..params.q as usize {
        let acc = coefficient_sum(params, perm_words, bases, e, gp, v, k);
        usq += acc * acc;
        match kind {
            StatKind::T if k == 0 => aux = acc,
            StatKind::F if k < params.s as usize => aux += acc * acc,
            _ => {}
        }
    }
    statistic_of_sums(kind, usq, aux, vox[v], params.dof, params.inv_s)
}

/// Run the stage on the CPU. `maps` may be empty when `FLAG_MAPS` is not set.
#[allow(clippy::too_many_arguments)]
pub fn glm_stat_voxelwise(
    params: &GlmParams,
    perm_words: &[u32],
    bases: &[f32],
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
            let t = statistic_at(params, perm_words, bases, e, vox, gp, v);
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
    use crate::glm_stat::{KIND_F, KIND_T};
    use crate::glm_stat_voxelwise::chunk_bases;

    /// A deterministic generator (the crate has no rand dependency).
    struct Lcg(u64);
    impl Lcg {
        fn word(&mut self) -> u32 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 32) as u32
        }
        fn unit(&mut self) -> f64 {
            self.word() as f64 / 4294967296.0 - 0.5
        }
    }

    /// One voxel's basis: q orthonormal columns of n rows (Gram-Schmidt twice in f64), n x q
    /// row-major, as `voxelwise_problem` gives each voxel.
    fn orthonormal(g: &mut Lcg, n: usize, q: usize) -> Vec<f64> {
        let mut b = vec![0.0f64; n * q];
        for k in 0..q {
            let mut col: Vec<f64> = (0..n).map(|_| g.unit()).collect();
            for _ in 0..2 {
                for kp in 0..k {
                    let d: f64 = (0..n).map(|i| col[i] * b[i * q + kp]).sum();
                    (0..n).for_each(|i| col[i] -= d * b[i * q + kp]);
                }
            }
            let norm = col.iter().map(|x| x * x).sum::<f64>().sqrt();
            (0..n).for_each(|i| b[i * q + k] = col[i] / norm);
        }
        b
    }

    /// The port against the kernel's definition computed directly in f64 from the same f32
    /// inputs: u_k = sum_m sign_p(m) Q_v[src_p(m)][k] E[m][v], t = u_1 / sqrt((ss - |u|^2) /
    /// dof), F = (|u_1..s|^2 / s) / ((ss - |u|^2) / dof), over sign flips, row exchanges and
    /// both, several words of signs, an offset dispatch; then the reductions (maxima, counts
    /// against an observed map, maps) against the same direct values.
    #[test]
    fn port_equals_the_definition_in_f64() {
        let mut g = Lcg(11);
        for (n, q, s, kind, flips, src) in [
            (7usize, 2usize, 1usize, KIND_T, true, false),
            (40, 3, 1, KIND_T, true, true),
            (58, 3, 2, KIND_F, false, true),
            (33, 1, 1, KIND_T, true, false),
        ] {
            let (vc, n_perm, offset) = (9usize, 6usize, 2usize);
            let total = offset + n_perm;
            let wpp = if flips { n.div_ceil(32) } else { 0 };
            let mut words: Vec<u32> = (0..total * wpp).map(|_| g.word()).collect();
            let src_base = words.len();
            let mut orders = Vec::new();
            for _ in 0..total {
                let mut order: Vec<usize> = (0..n).collect();
                if src {
                    for i in (1..n).rev() {
                        order.swap(i, g.word() as usize % (i + 1));
                    }
                    words.extend(order.iter().map(|&r| r as u32));
                }
                orders.push(order);
            }
            // Problem layout (voxel blocks of n x q), converted to the shader's as the engine does.
            let problem_bases: Vec<f32> = (0..vc).flat_map(|_| orthonormal(&mut g, n, q)).map(|x| x as f32).collect();
            let bases = chunk_bases(&problem_bases, n, q, 0, vc);
            let e: Vec<f32> = (0..n * vc).map(|_| (g.unit() * 3.0 + 0.2) as f32).collect();
            let ss: Vec<f32> =
                (0..vc).map(|v| (0..n).map(|m| (e[m * vc + v] as f64).powi(2)).sum::<f64>() as f32).collect();
            let obs: Vec<f32> = (0..vc).map(|_| g.unit() as f32).collect();
            let vox: Vec<f32> = ss.iter().chain(&obs).copied().collect();
            let params = GlmParams {
                n: n as u32,
                q: q as u32,
                s: s as u32,
                kind,
                vc: vc as u32,
                n_perm: n_perm as u32,
                perm_offset: offset as u32,
                wpp: wpp as u32,
                src_base: src_base as u32,
                flags: FLAG_MAPS | FLAG_OBSERVED | if src { FLAG_SRC } else { 0 },
                maps_base: offset as u32,
                dof: (n - q) as f32,
                inv_s: GlmParams::inv_s_of(s as u32),
                ..Default::default()
            };
            let mut max_bits = vec![0u32; total];
            let mut counts = vec![0u32; vc];
            let mut maps = vec![0f32; n_perm * vc];
            glm_stat_voxelwise(&params, &words, &bases, &e, &vox, &mut max_bits, &mut counts, &mut maps);
            let eps = f32::EPSILON as f64 / 2.0;
            let gamma = (n + 1) as f64 * eps / (1.0 - (n + 1) as f64 * eps);
            let mut want_counts = vec![0u32; vc];
            for gp in offset..total {
                let mut want_max = f64::NEG_INFINITY;
                for v in 0..vc {
                    let mut u = vec![0.0f64; q];
                    for (k, uk) in u.iter_mut().enumerate() {
                        let mut abs = 0.0f64;
                        for m in 0..n {
                            let neg = flips && (words[gp * wpp + m / 32] >> (m % 32)) & 1 != 0;
                            let row = orders[gp][m];
                            let term = problem_bases[(v * n + row) * q + k] as f64 * e[m * vc + v] as f64;
                            *uk += if neg { -term } else { term };
                            abs += term.abs();
                        }
                        // The f32 fused sum of n terms errs by at most gamma_(n+1) sum |terms|
                        // (Higham, Accuracy and Stability, 3.1); f64 is exact far below it.
                        let got = coefficient_sum(&params, &words, &bases, &e, gp, v, k) as f64;
                        assert!((got - *uk).abs() <= gamma * abs, "n {n} perm {gp} voxel {v} k {k}: {got} vs {uk}");
                    }
                    let usq: f64 = u.iter().map(|x| x * x).sum();
                    let sigma2 = (ss[v] as f64 - usq) / (n - q) as f64;
                    let want = match kind {
                        KIND_T => u[0] / sigma2.sqrt(),
                        _ => u[..s].iter().map(|x| x * x).sum::<f64>() / s as f64 / sigma2,
                    };
                    let got = maps[(gp - offset) * vc + v] as f64;
                    // u within gamma_n sqrt(ss) (|Q_k| = 1, Cauchy-Schwarz), which for the RSS
                    // of random data (far from 0) moves t or F by well under 1e-4 of
                    // max(|T|, 1); the f32 epilogue adds a few ULP.
                    assert!(
                        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "n {n} perm {gp} voxel {v}: {got} vs {want}"
                    );
                    want_max = want_max.max(got);
                    want_counts[v] += (got >= obs[v] as f64) as u32;
                }
                assert_eq!(max_bits[gp], key_of(want_max as f32), "n {n} perm {gp}: maximum of the map");
            }
            assert_eq!(max_bits[..offset], [0, 0], "permutations outside the dispatch untouched");
            assert_eq!(counts, want_counts, "n {n}: exceedances of the maps");
            assert!(counts.iter().any(|&c| c > 0) && counts.iter().any(|&c| (c as usize) < n_perm), "{counts:?}");
        }
    }
}
