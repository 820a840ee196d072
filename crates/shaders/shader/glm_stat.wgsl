// glm_stat: permutation GLM product + statistic epilogue + reductions, one dispatch per
// (permutation sub-batch, voxel chunk). See DESIGN.md, "The GLM and Freedman–Lane".
//
// For permutation p and voxel v of the chunk:
//   u_k = sum_m A_p[k][m] * E[m][v],  A_p[k][m] = sign_p(m) * Q[src_p(m)][k]
//   T   = statistic(kind, u, s, ss[v], dof)        (shared/statistic.wgsl: voxflip_stats's formula)
// then: per-permutation max over voxels (atomicMax on an order-preserving u32 key),
// per-voxel exceedance counts #{p : T >= observed[v]} (atomicAdd), optional maps.
//
// CPU port: src/cpu/glm_stat.rs (same buffers, same accumulation order).
//
// The tiling constants (WG_V, WG_P, RV, RP, KT, TP, TV, WG_SIZE, A_TILE, E_TILE, A_LOADS,
// E_LOADS), the parameters and their flag bits are generated from src/glm_stat.rs, so Rust
// and WGSL can never disagree on them.
//
// Tiling (SHARED_TILES = true, the Tiles kernel: the first GPU path, now the fallback of the
// Wide kernels in glm_stat_wide.wgsl): a workgroup of WG_V x WG_P = 16 x 8
// invocations owns a tile of TP = WG_P*RP = 32 permutations by TV = WG_V*RV = 64 voxels; each
// invocation keeps an RP x RV = 4 x 4 register block (four vec4 accumulators). N is walked
// in slices of KT = 32 rows: the slice of coefficient rows (generated here from the sign bits,
// the row sources and Q) and the slice of E go through workgroup memory (12,416 bytes with
// wg_max). The columns k of Q are the outer loop, so the block holds one u_k at a time and
// the epilogue folds it into |u|^2 and aux in the order voxflip_stats::statistic uses
// (k = 0, 1, ...), |u_1..s|^2 (F) and u_1 (t) sharing one accumulator, `aux`, since each
// statistic needs only one of them. The direct path (SHARED_TILES = false, software adapters) keeps the same
// register block but reads from storage buffers; see `SHARED_TILES` below.
//
// Every (permutation, voxel) is owned by exactly one invocation, and each u_k is the sum
// over m = 0..n-1 in order of fma(A, E, acc): the same terms, in the same order, as the twin.

#import glm_stat_tiling
#import glm_bindings
#import keys
#import statistic

// true: slices of A and E staged in workgroup memory (GPUs). false: every invocation reads
// E and builds its coefficients straight from the storage buffers. lavapipe lowers each
// workgroup-memory load to a scalar loop over the SIMD lanes and keeps loop-carried values in
// memory, so there direct loads are about twice as fast and the host picks false for
// software adapters. Both paths sum the same terms in the same order.
override SHARED_TILES: bool = true;
// Whether the permutations exchange rows (FLAG_SRC), fixed per pipeline on the direct path so
// that the sign-flip case carries no row-source code in its inner loop.
override HAS_SRC: bool = false;
// Rows per unrolled block of the direct path; UNROLL divides 32 (sign words are reloaded at
// block starts).
const UNROLL: u32 = 8u;

var<workgroup> a_sh: array<f32, A_TILE>;   // [kk][pp]: KT x TP coefficient values
var<workgroup> e_sh: array<f32, E_TILE>;   // [kk][vv]: KT x TV residuals
var<workgroup> wg_max: array<atomic<u32>, TP>;

// A_p[k][m] = sign_p(m) * Q[src_p(m)][k] for permutation p of the dispatch (0 outside it).
// Branch-free on purpose: every load is made with an index that is valid either way and the
// unwanted value is dropped with select(). lavapipe turns a load under a condition it cannot
// prove uniform into a scalar loop over the lanes, several times slower than a plain load.
fn coef(p: u32, m: u32, k: u32) -> f32 {
    let inside = p < P.n_perm;
    let gp = P.perm_offset + min(p, P.n_perm - 1u);
    let has_src = (P.flags & FLAG_SRC) != 0u;
    let row = select(m, perm_words[select(0u, P.src_base + gp * P.n + m, has_src)], has_src);
    let val = qbasis[row * P.q + k];
    let w = perm_words[select(0u, gp * P.wpp + m / 32u, P.wpp > 0u)];
    let neg = P.wpp > 0u && ((w >> (m % 32u)) & 1u) != 0u;
    return select(0.0, select(val, -val, neg), inside);
}

// E[m][v] of the chunk, 0 past its last voxel; branch-free like coef.
fn e_at(m: u32, v: u32) -> f32 {
    let inside = v < P.vc;
    return select(0.0, e_chunk[m * P.vc + min(v, P.vc - 1u)], inside);
}

// One permutation's row of the register block: maps, the workgroup maximum, and the
// exceedance increments it contributes (returned, per voxel).
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
    // p - p0 < TP always (p = p0 + ty + i*WG_P, or p0 + i): a slot of this tile.
    atomicMax(&wg_max[p - p0], max(max(k.x, k.y), max(k.z, k.w)));
    let hit = valid & (t >= obsv) & vec4<bool>((P.flags & FLAG_OBSERVED) != 0u);
    return select(vec4<u32>(0u), vec4<u32>(1u), hit);
}

@compute @workgroup_size(WG_V, WG_P, 1)
fn main(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let tx = lid.x;
    let ty = lid.y;
    // Where this invocation's register block sits. Workgroup tiles: permutations
    // p0 + ty + i*WG_P, voxels v0 + tx + j*WG_V (interleaved so neighbouring invocations read
    // neighbouring workgroup-memory words). Direct loads: the whole workgroup shares the RP
    // permutations p0 + i (their coefficients are the same for every invocation, and without
    // row sources the Q value of a row is one load for all four) and spreads over
    // RV*WG_SIZE voxels, v0 + lidx + j*WG_SIZE.
    var v0 = wid.x * TV;
    var p0 = wid.y * TP;
    var pbase = p0 + ty;
    var pstride = WG_P;
    var vbase = v0 + tx;
    var vstride = WG_V;
    var tile_perms = TP;
    if (!SHARED_TILES) {
        v0 = wid.x * (RV * WG_SIZE);
        p0 = wid.y * RP;
        pbase = p0;
        pstride = 1u;
        vbase = v0 + lidx;
        vstride = WG_SIZE;
        tile_perms = RP;
    }
    let n = P.n;
    let q = P.q;
    let vc = P.vc;
    let n_perm = P.n_perm;

    if (lidx < TP) {
        atomicStore(&wg_max[lidx], 0u);
    }
    // Not implied by the barriers below when n or q is 0.
    workgroupBarrier();

    // The register block lives in vec4s, not arrays: CPU implementations (lavapipe) keep
    // dynamically indexed arrays in memory, which made the inner loop several times slower.
    // acc_i holds permutation pbase + i*pstride, its component j voxel vbase + j*vstride
    // (RP = RV = 4, asserted on the host side).
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
        if (!SHARED_TILES) {
            // The coefficients of the workgroup's RP permutations, built incrementally: the
            // sign word is reloaded every 32 rows only, and without row sources the Q value
            // is the same for all RP permutations (one load, not RP). coef() did 3 loads
            // per permutation and row, which was 2/3 of the time on lavapipe.
            let pv = vec4<u32>(pbase) + vec4<u32>(0u, 1u, 2u, 3u) * pstride;
            let pin = pv < vec4<u32>(n_perm);
            let gp = vec4<u32>(P.perm_offset) + min(pv, vec4<u32>(n_perm - 1u));
            var w = vec4<u32>(0u);
            // Blocks of UNROLL rows with a constant inner trip count: the compiler unrolls
            // them, so the accumulators stay in registers across the block (lavapipe keeps
            // loop-carried values in memory). Rows past n get coefficient 0: fma(0, e, acc)
            // == acc, the same sum as the twin's.
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
                    let ev = vec4<f32>(e_at(mc, vbase), e_at(mc, vbase + vstride), e_at(mc, vbase + 2u * vstride), e_at(mc, vbase + 3u * vstride));
                    var qv = vec4<f32>(qbasis[mc * q + k]);
                    if (HAS_SRC) {
                        let si = vec4<u32>(P.src_base + mc) + gp * n;
                        let rows = vec4<u32>(perm_words[si.x], perm_words[si.y], perm_words[si.z], perm_words[si.w]);
                        qv = vec4<f32>(qbasis[rows.x * q + k], qbasis[rows.y * q + k], qbasis[rows.z * q + k], qbasis[rows.w * q + k]);
                    }
                    // w stays 0 without sign flips, so nothing is negated.
                    let neg = ((w >> vec4<u32>(m % 32u)) & vec4<u32>(1u)) != vec4<u32>(0u);
                    let c = select(vec4<f32>(0.0), select(qv, -qv, neg), pin & vec4<bool>(m < n));
                    a0 = fma(vec4<f32>(c.x), ev, a0);
                    a1 = fma(vec4<f32>(c.y), ev, a1);
                    a2 = fma(vec4<f32>(c.z), ev, a2);
                    a3 = fma(vec4<f32>(c.w), ev, a3);
                }
                acc0 = a0;
                acc1 = a1;
                acc2 = a2;
                acc3 = a3;
            }
        }
        for (var m0 = 0u; SHARED_TILES && m0 < n; m0 += KT) {
            // Coefficient slice: A_p[k][m] for the tile's permutations, rows m0..m0+KT.
            for (var r = 0u; r < A_LOADS; r++) {
                let idx = lidx + r * WG_SIZE;
                let kk = idx / TP;
                let pp = idx % TP;
                let m = m0 + kk;
                let p = p0 + pp;
                a_sh[idx] = select(0.0, coef(p, min(m, n - 1u), k), m < n);
            }
            // Residual slice: E[m][v] for rows m0..m0+KT and the tile's voxels.
            for (var r = 0u; r < E_LOADS; r++) {
                let idx = lidx + r * WG_SIZE;
                let kk = idx / TV;
                let vv = idx % TV;
                let m = m0 + kk;
                let v = v0 + vv;
                e_sh[idx] = select(0.0, e_at(min(m, n - 1u), v), m < n);
            }
            workgroupBarrier();
            // Only the rows that exist, so the sum over m has exactly the twin's terms.
            let kmax = min(KT, n - m0);
            for (var kk = 0u; kk < kmax; kk++) {
                let eb = kk * TV + tx;
                let ev = vec4<f32>(e_sh[eb], e_sh[eb + WG_V], e_sh[eb + 2u * WG_V], e_sh[eb + 3u * WG_V]);
                let ab = kk * TP + ty;
                acc0 = fma(vec4<f32>(a_sh[ab]), ev, acc0);
                acc1 = fma(vec4<f32>(a_sh[ab + WG_P]), ev, acc1);
                acc2 = fma(vec4<f32>(a_sh[ab + 2u * WG_P]), ev, acc2);
                acc3 = fma(vec4<f32>(a_sh[ab + 3u * WG_P]), ev, acc3);
            }
            workgroupBarrier();
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
    // Epilogue, vectorised over the RV = 4 voxels and branch-free like coef (lavapipe turns
    // divergent loads into per-lane loops; for small N this epilogue costs as much as the
    // product otherwise).
    let vj = vec4<u32>(vbase) + vec4<u32>(0u, 1u, 2u, 3u) * vstride;
    let vin = vj < vec4<u32>(vc);
    let vcl = min(vj, vec4<u32>(vc - 1u));
    let ssv = vec4<f32>(vox[vcl.x], vox[vcl.y], vox[vcl.z], vox[vcl.w]);
    let obsv = vec4<f32>(vox[vc + vcl.x], vox[vc + vcl.y], vox[vc + vcl.z], vox[vc + vcl.w]);
    var cnt = vec4<u32>(0u);
    cnt += finish_perm(pbase, p0, statistic4(P.kind, usq0, aux0, ssv, P.dof, P.inv_s), vin, obsv, vj);
    cnt += finish_perm(pbase + pstride, p0, statistic4(P.kind, usq1, aux1, ssv, P.dof, P.inv_s), vin, obsv, vj);
    cnt += finish_perm(pbase + 2u * pstride, p0, statistic4(P.kind, usq2, aux2, ssv, P.dof, P.inv_s), vin, obsv, vj);
    cnt += finish_perm(pbase + 3u * pstride, p0, statistic4(P.kind, usq3, aux3, ssv, P.dof, P.inv_s), vin, obsv, vj);
    if ((P.flags & FLAG_OBSERVED) != 0u) {
        // Zero increments (voxels past the chunk) land on a valid index and change nothing.
        atomicAdd(&counts[vcl.x], cnt.x);
        atomicAdd(&counts[vcl.y], cnt.y);
        atomicAdd(&counts[vcl.z], cnt.z);
        atomicAdd(&counts[vcl.w], cnt.w);
    }
    workgroupBarrier();
    if (lidx < tile_perms) {
        let p = p0 + lidx;
        if (p < n_perm) {
            atomicMax(&max_bits[P.perm_offset + p], atomicLoad(&wg_max[lidx]));
        }
    }
}
