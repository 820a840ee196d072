// glm_stat_voxelwise: glm_stat for voxelwise regressors (randomise --vxl), one dispatch per
// (permutation sub-batch, voxel chunk). See DESIGN.md, "The GLM and Freedman–Lane", and
// crates/stats/src/voxelwise.rs for how each voxel's basis Q_v is built.
//
// For permutation p and voxel v of the chunk:
//   u_k = sum_m A_p[k][m][v] * E[m][v],  A_p[k][m][v] = sign_p(m) * Q_v[src_p(m)][k]
//   T   = statistic(kind, u, s, ss[v], dof)        (shared/statistic.wgsl)
// then the reductions of glm_stat: per-permutation max over voxels (atomicMax on the
// order-preserving key), per-voxel exceedance counts, optional maps.
//
// The bindings are glm_stat's (shared/glm_bindings.wgsl), `qbasis` holding the chunk's
// bases: qbasis[(m * q + k) * vc + v], voxels fastest like e_chunk.
//
// CPU port: src/cpu/glm_stat_voxelwise.rs (same buffers, same accumulation order).
//
// Layout: a workgroup of WG_SIZE invocations owns TP = RP = 4 permutations (the same for
// every invocation, so their sign words and row sources are uniform loads) and TV = RV *
// WG_SIZE voxels; invocation lidx holds voxels v0 + lidx + j * WG_SIZE, j < RV (neighbouring
// invocations read neighbouring words of e_chunk and qbasis). No workgroup memory stages the
// operands: nothing is shared between voxels, every coefficient is read once per use. Every
// (permutation, voxel) is owned by exactly one invocation, and each u_k is the sum over
// m = 0..n-1 in order of fma(A, E, acc): the same terms, in the same order, as the twin.

#import glm_stat_voxelwise_tiling
#import glm_bindings
#import keys
#import statistic

// Whether the permutations exchange rows (FLAG_SRC), fixed per pipeline so that the
// sign-flip case reads one basis value per row for all four permutations.
override HAS_SRC: bool = false;

var<workgroup> wg_max: array<atomic<u32>, TP>;

// Q_v[row][k] for the four voxels `vcl` (clamped into the chunk) as one vec4.
fn basis4(row: u32, k: u32, vcl: vec4<u32>) -> vec4<f32> {
    let b = (row * P.q + k) * P.vc;
    return vec4<f32>(qbasis[b + vcl.x], qbasis[b + vcl.y], qbasis[b + vcl.z], qbasis[b + vcl.w]);
}

// One permutation's row of the block: maps, the workgroup maximum, and the exceedance
// increments it contributes (returned, per voxel).
fn finish_perm(p: u32, p0: u32, t: vec4<f32>, vin: vec4<bool>, obsv: vec4<f32>, vj: vec4<u32>) -> vec4<u32> {
    let pin = p < P.n_perm;
    let valid = vin & vec4<bool>(pin);
    if ((P.flags & FLAG_MAPS) != 0u) {
        let row = (P.perm_offset + p - P.maps_base) * P.vc;
        if (valid.x) { maps[row + vj.x] = t.x; }
        if (valid.y) { maps[row + vj.y] = t.y; }
        if (valid.z) { maps[row + vj.z] = t.z; }
        if (valid.w) { maps[row + vj.w] = t.w; }
    }
    let k = select(vec4<u32>(0u), key_of4(t), valid);
    // p - p0 < TP: a slot of this workgroup.
    atomicMax(&wg_max[p - p0], max(max(k.x, k.y), max(k.z, k.w)));
    let hit = valid & (t >= obsv) & vec4<bool>((P.flags & FLAG_OBSERVED) != 0u);
    return select(vec4<u32>(0u), vec4<u32>(1u), hit);
}

@compute @workgroup_size(WG_SIZE, 1, 1)
fn main(
    @builtin(local_invocation_index) lidx: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let n = P.n;
    let q = P.q;
    let vc = P.vc;
    let n_perm = P.n_perm;
    let p0 = wid.y * TP;
    let vbase = wid.x * TV + lidx;

    if (lidx < TP) {
        atomicStore(&wg_max[lidx], 0u);
    }
    // Not implied by the barrier below when n or q is 0.
    workgroupBarrier();

    // The invocation's voxels (clamped into the chunk: a voxel past it reads its last voxel's
    // values, and its results are dropped in finish_perm) and the workgroup's permutations.
    let vj = vec4<u32>(vbase) + vec4<u32>(0u, 1u, 2u, 3u) * WG_SIZE;
    let vin = vj < vec4<u32>(vc);
    let vcl = min(vj, vec4<u32>(vc - 1u));
    let pv = vec4<u32>(p0) + vec4<u32>(0u, 1u, 2u, 3u);
    let pin = pv < vec4<u32>(n_perm);
    let gp = vec4<u32>(P.perm_offset) + min(pv, vec4<u32>(n_perm - 1u));

    // acc_i: permutation p0 + i, its component j voxel vj[j]. vec4s, not arrays: lavapipe
    // keeps dynamically indexed arrays in memory.
    var usq0 = vec4<f32>(0.0);
    var usq1 = vec4<f32>(0.0);
    var usq2 = vec4<f32>(0.0);
    var usq3 = vec4<f32>(0.0);
    var aux0 = vec4<f32>(0.0);
    var aux1 = vec4<f32>(0.0);
    var aux2 = vec4<f32>(0.0);
    var aux3 = vec4<f32>(0.0);
    let is_t = P.kind == KIND_T;

    for (var k = 0u; k < q; k++) {
        var acc0 = vec4<f32>(0.0);
        var acc1 = vec4<f32>(0.0);
        var acc2 = vec4<f32>(0.0);
        var acc3 = vec4<f32>(0.0);
        var w = vec4<u32>(0u);
        // Blocks of UNROLL rows with a constant inner trip count, unrolled by the compiler so
        // that the accumulators stay in registers across the block. Rows past n get
        // coefficient 0: fma(0, e, acc) == acc, the twin's sum.
        for (var m0 = 0u; m0 < n; m0 += UNROLL) {
            if (P.wpp > 0u && (m0 % 32u) == 0u) {
                let wi = gp * P.wpp + vec4<u32>(m0 / 32u);
                w = vec4<u32>(perm_words[wi.x], perm_words[wi.y], perm_words[wi.z], perm_words[wi.w]);
            }
            var a0 = acc0;
            var a1 = acc1;
            var a2 = acc2;
            var a3 = acc3;
            for (var u = 0u; u < UNROLL; u++) {
                let m = m0 + u;
                let mc = min(m, n - 1u);
                let eb = mc * vc;
                let ev = vec4<f32>(e_chunk[eb + vcl.x], e_chunk[eb + vcl.y], e_chunk[eb + vcl.z], e_chunk[eb + vcl.w]);
                var q0 = basis4(mc, k, vcl);
                var q1 = q0;
                var q2 = q0;
                var q3 = q0;
                if (HAS_SRC) {
                    let si = vec4<u32>(P.src_base + mc) + gp * n;
                    q0 = basis4(perm_words[si.x], k, vcl);
                    q1 = basis4(perm_words[si.y], k, vcl);
                    q2 = basis4(perm_words[si.z], k, vcl);
                    q3 = basis4(perm_words[si.w], k, vcl);
                }
                // w stays 0 without sign flips, so nothing is negated.
                let neg = ((w >> vec4<u32>(m % 32u)) & vec4<u32>(1u)) != vec4<u32>(0u);
                let live = pin & vec4<bool>(m < n);
                a0 = fma(select(vec4<f32>(0.0), select(q0, -q0, neg.x), live.x), ev, a0);
                a1 = fma(select(vec4<f32>(0.0), select(q1, -q1, neg.y), live.y), ev, a1);
                a2 = fma(select(vec4<f32>(0.0), select(q2, -q2, neg.z), live.z), ev, a2);
                a3 = fma(select(vec4<f32>(0.0), select(q3, -q3, neg.w), live.w), ev, a3);
            }
            acc0 = a0;
            acc1 = a1;
            acc2 = a2;
            acc3 = a3;
        }
        // Fold u_k as voxflip_stats::statistic does: |u|^2 over all k; aux = u_1 (t) or
        // |u_1..s|^2 (F).
        usq0 += acc0 * acc0;
        usq1 += acc1 * acc1;
        usq2 += acc2 * acc2;
        usq3 += acc3 * acc3;
        if (is_t) {
            if (k == 0u) {
                aux0 = acc0;
                aux1 = acc1;
                aux2 = acc2;
                aux3 = acc3;
            }
        } else if (k < P.s) {
            aux0 += acc0 * acc0;
            aux1 += acc1 * acc1;
            aux2 += acc2 * acc2;
            aux3 += acc3 * acc3;
        }
    }
    let ssv = vec4<f32>(vox[vcl.x], vox[vcl.y], vox[vcl.z], vox[vcl.w]);
    let obsv = vec4<f32>(vox[vc + vcl.x], vox[vc + vcl.y], vox[vc + vcl.z], vox[vc + vcl.w]);
    var cnt = vec4<u32>(0u);
    cnt += finish_perm(pv.x, p0, statistic4(P.kind, usq0, aux0, ssv, P.dof, P.inv_s), vin, obsv, vj);
    cnt += finish_perm(pv.y, p0, statistic4(P.kind, usq1, aux1, ssv, P.dof, P.inv_s), vin, obsv, vj);
    cnt += finish_perm(pv.z, p0, statistic4(P.kind, usq2, aux2, ssv, P.dof, P.inv_s), vin, obsv, vj);
    cnt += finish_perm(pv.w, p0, statistic4(P.kind, usq3, aux3, ssv, P.dof, P.inv_s), vin, obsv, vj);
    if ((P.flags & FLAG_OBSERVED) != 0u) {
        // Zero increments (voxels past the chunk) land on a valid index and change nothing.
        atomicAdd(&counts[vcl.x], cnt.x);
        atomicAdd(&counts[vcl.y], cnt.y);
        atomicAdd(&counts[vcl.z], cnt.z);
        atomicAdd(&counts[vcl.w], cnt.w);
    }
    workgroupBarrier();
    if (lidx < TP) {
        let p = p0 + lidx;
        if (p < n_perm) {
            atomicMax(&max_bits[P.perm_offset + p], atomicLoad(&wg_max[lidx]));
        }
    }
}
