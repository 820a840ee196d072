//! CPU twin of `shaders/glm_stat.wgsl`.
//!
//! Same buffers as the shader's bindings: `params`, `perm_words` ([sign words | row sources]),
//! `qbasis` (n x q), `e` (the chunk, n x vc), `vox` ([ss | observed], 2 vc) in; `max_bits`
//! (order-preserving keys, combined with max), `counts` (added to) and `maps` out.
//! Each u_k is accumulated over m = 0..n in order with a fused multiply-add, as each shader
//! invocation does, and folded into |u|^2 in the order k = 0..q. The remaining differences
//! come from the driver: WGSL lets division and sqrt be a few ULP off and lets a compiler
//! contract `u*u + acc`; on lavapipe the maps agree to within 6e-6 relative.
use crate::engine::gpu::glm_stat::{key_of, GlmParams, FLAG_MAPS, FLAG_OBSERVED, FLAG_SRC};

/// The statistic from folded sums, exactly as the shader's `statistic4` per voxel.
// `!(ss > 0.0)` rather than `ss <= 0.0`: a NaN ss must give 0, as in engine::statistic.
#[allow(clippy::neg_cmp_op_on_partial_ord)]
pub fn statistic(params: &GlmParams, unorm: f32, num: f32, u0: f32, ss: f32) -> f32 {
    if !(ss > 0.0) {
        return 0.0;
    }
    let rss = (ss - unorm).max(ss * 1e-6);
    let sigma2 = rss / params.dof;
    if params.kind == 0 {
        u0 / sigma2.sqrt()
    } else {
        (num / params.s as f32) / sigma2
    }
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
    let n = params.n as usize;
    let q = params.q as usize;
    let s = params.s as usize;
    let vc = params.vc as usize;
    let wpp = params.wpp as usize;
    let has_src = params.flags & FLAG_SRC != 0;
    let has_obs = params.flags & FLAG_OBSERVED != 0;
    let write_maps = params.flags & FLAG_MAPS != 0;
    let mut a = vec![0.0f32; q * n];
    for p in 0..params.n_perm as usize {
        let gp = params.perm_offset as usize + p;
        // Coefficient rows, generated as the shader generates its slices.
        for k in 0..q {
            for m in 0..n {
                let row = if has_src { perm_words[params.src_base as usize + gp * n + m] as usize } else { m };
                let mut val = qbasis[row * q + k];
                if wpp > 0 && (perm_words[gp * wpp + m / 32] >> (m % 32)) & 1 != 0 {
                    val = -val;
                }
                a[k * n + m] = val;
            }
        }
        let mut best = 0u32;
        for v in 0..vc {
            let (mut unorm, mut num, mut u0) = (0.0f32, 0.0f32, 0.0f32);
            for k in 0..q {
                let mut acc = 0.0f32;
                for m in 0..n {
                    acc = a[k * n + m].mul_add(e[m * vc + v], acc);
                }
                unorm += acc * acc;
                if k < s {
                    num += acc * acc;
                }
                if k == 0 {
                    u0 = acc;
                }
            }
            let t = statistic(params, unorm, num, u0, vox[v]);
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
