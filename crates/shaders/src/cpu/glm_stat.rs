//! CPU port of `shader/glm_stat.wgsl`.
//!
//! Same buffers as the shader's bindings: `params`, `perm_words` ([sign words | row sources]),
//! `qbasis` (n x q), `e` (the chunk, n x vc), `vox` ([ss | observed], 2 vc) in; `max_bits`
//! (order-preserving keys, combined with max), `counts` (added to) and `maps` out.
//! Each u_k is accumulated over m = 0..n in order with a fused multiply-add, as each shader
//! invocation does, folded into |u|^2 and aux (u_1 or |u_1..s|^2) in the order k = 0..q, and
//! turned into the statistic by [`voxflip_stats::statistic_of_sums`], the formula the
//! shaders' `statistic4` spells in WGSL. The remaining differences come from the driver:
//! WGSL lets division and sqrt be a few ULP off and lets a compiler contract `u*u + acc`; on
//! lavapipe the maps agree to within 6e-6 relative.
use crate::glm_stat::{GlmParams, FLAG_MAPS, FLAG_OBSERVED, FLAG_SRC, KIND_T};
use crate::keys::key_of;
use voxflip_stats::{statistic_of_sums, StatKind};

/// The statistic kind of `params.kind`.
pub fn kind_of(params: &GlmParams) -> StatKind {
    if params.kind == KIND_T {
        StatKind::T
    } else {
        StatKind::F
    }
}

/// The coefficient A_p[k][m] = sign_p(m) * Q[src_p(m)][k] of permutation `gp` of the batch.
pub fn coefficient(params: &GlmParams, perm_words: &[u32], qbasis: &[f32], gp: usize, m: usize, k: usize) -> f32 {
    let (n, q, wpp) = (params.n as usize, params.q as usize, params.wpp as usize);
    let row = if params.flags & FLAG_SRC != 0 { perm_words[params.src_base as usize + gp * n + m] as usize } else { m };
    let val = qbasis[row * q + k];
    if wpp > 0 && (perm_words[gp * wpp + m / 32] >> (m % 32)) & 1 != 0 {
        -val
    } else {
        val
    }
}

/// The statistic of permutation `gp` of the batch at voxel `v` of the chunk: each u_k summed
/// over m = 0..n in order with a fused multiply-add, as each shader invocation sums it,
/// folded into |u|^2 and aux in the order k = 0..q, then the one formula.
pub fn statistic_at(
    params: &GlmParams,
    perm_words: &[u32],
    qbasis: &[f32],
    e: &[f32],
    vox: &[f32],
    gp: usize,
    v: usize,
) -> f32 {
    let (n, q, s, vc) = (params.n as usize, params.q as usize, params.s as usize, params.vc as usize);
    let kind = kind_of(params);
    let (mut usq, mut aux) = (0.0f32, 0.0f32);
    for k in 0..q {
        let mut acc = 0.0f32;
        for m in 0..n {
            acc = coefficient(params, perm_words, qbasis, gp, m, k).mul_add(e[m * vc + v], acc);
        }
        usq += acc * acc;
        match kind {
            StatKind::T if k == 0 => aux = acc,
            StatKind::F if k < s => aux += acc * acc,
            _ => {}
        }
    }
    statistic_of_sums(kind, usq, aux, vox[v], params.dof, params.inv_s)
}

/// Run the stage on the CPU. `maps` may be empty when `FLAG_MAPS` is not set.
#[allow(clippy::too_many_arguments)]
pub fn glm_stat(
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
    let has_obs = params.flags & FLAG_OBSERVED != 0;
    let write_maps = params.flags & FLAG_MAPS != 0;
    for p in 0..params.n_perm as usize {
        let gp = params.perm_offset as usize + p;
        let mut best = 0u32;
        for v in 0..vc {
            let t = statistic_at(params, perm_words, qbasis, e, vox, gp, v);
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
