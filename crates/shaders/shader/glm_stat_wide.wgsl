// glm_stat, wide-tile variant for hardware GPUs: the same computation, buffers and results as
// glm_stat.wgsl (read that file's header first), with a data path built for throughput. The
// host picks one of the two per adapter (GlmKernel in src/glm_stat.rs). CPU port:
// src/cpu/glm_stat_wide.rs, which walks this file's tiles and equals src/cpu/glm_stat.rs.
//
// The tiling constants (WG_V, WG_P, RV, RP, KT, TP, TV, TP4, TV4, WG_SIZE, A_LOADS, E_LOADS)
// are generated from src/glm_stat.rs (module `wide`), the parameters and flags too.
//
// Tiling: a workgroup of WG_V x WG_P = 16 x 16 invocations (16 x 8 for the Wide128 kernel)
// owns a tile of TP = WG_P * RP = 128 (64) permutations by TV = 64 voxels; each invocation
// keeps an RP x RV = 8 x 4 register block (eight vec4 accumulators). Why, against the 4 x 4
// block of glm_stat.wgsl: there every k-step cost 16 FMAs against 8 workgroup-memory loads
// (4 scalar coefficients, 4 scalar residuals), so the kernel was bound by workgroup-memory
// bandwidth. Here both slices are stored as vec4
// words, laid out so that an invocation's 4 voxels and each group of 4 of its permutations are
// one 128-bit word: per k-step 3 loads (one E word, two coefficient words) feed 32 FMAs.
// Invocation (tx, ty) holds permutations p0 + 4*ty + i (acc0..acc3) and
// p0 + 4*(ty + WG_P) + i (acc4..acc7), voxels v0 + 4*tx + c (component c). Neighbouring
// invocations along x read neighbouring E words (conflict-free), invocations along y share
// coefficient words (broadcast).
//
// N is walked in slices of KT rows, unrolled by hand 8 rows at a time, the last slice's
// remainder row by row: each u_k is the sum over m = 0..n-1 in order of fma(A, E, acc), the
// twin's terms in the twin's order.
// The columns k of Q stay the outer loop (the block holds one u_k at a time; q is small), and
// the epilogue folds u_k as voxflip_stats::statistic does. To save registers, |u_1..s|^2 (F) and
// u_1 (t) share one accumulator, `aux`, since each statistic needs only one of them.
//
// Reductions: the per-permutation maximum and the per-voxel exceedance counts are first
// combined in workgroup memory, then one global atomic per permutation and per voxel of the
// tile.
//
// Every index is in range by construction (workgroup arrays by the constants, storage buffers
// clamped here against n, vc and n_perm), so the host may compile this shader without wgpu's
// runtime checks (the engines crate's unchecked option); keep it that way when editing.

#import glm_stat_tiling
#import glm_bindings
#import keys
#import statistic

// Whether the permutations exchange rows (FLAG_SRC); the host builds one pipeline per value.
override HAS_SRC: bool = false;

// Two-dimensional on purpose: wgpu clamps every dynamic array index (min(i, len - 1)). With
// [row][word], the inner index (tx, ty, ty + WG_P) is loop-invariant, so its clamp is hoisted
// out of the slice loop, and the row clamp is one min per row shared by both arrays (both
// have KT rows); a flat [row * width + word] index needed a clamp per load.
var<workgroup> a_sh: array<array<vec4<f32>, TP4>, KT>;   // [kk][j]: permutations p0 + 4j .. 4j+3
var<workgroup> e_sh: array<array<vec4<f32>, TV4>, KT>;   // [kk][j]: voxels v0 + 4j .. 4j+3
var<workgroup> wg_max: array<atomic<u32>, TP>;
var<workgroup> wg_cnt: array<atomic<u32>, TV>;

// A_p[k][m] for four permutations: gp their (clamped) indices in perm_words, pin whether they
// are in the dispatch, w their sign words for row m (0 without sign flips). 0 outside the
// dispatch or past row n.
fn coef4(gp: vec4<u32>, pin: vec4<bool>, w: vec4<u32>, m: u32, k: u32) -> vec4<f32> {
    let inside = pin & vec4<bool>(m < P.n);
    let mc = min(m, P.n - 1u);
    var val = vec4<f32>(qbasis[mc * P.q + k]);
    if (HAS_SRC) {
        let si = vec4<u32>(P.src_base + mc) + gp * P.n;
        let rows = vec4<u32>(perm_words[si.x], perm_words[si.y], perm_words[si.z], perm_words[si.w]);
        // Clamped: a source past n cannot reach outside Q (PermSet never makes one).
        let rc = min(rows, vec4<u32>(P.n - 1u));
        val = vec4<f32>(qbasis[rc.x * P.q + k], qbasis[rc.y * P.q + k], qbasis[rc.z * P.q + k], qbasis[rc.w * P.q + k]);
    }
    let neg = ((w >> vec4<u32>(m % 32u)) & vec4<u32>(1u)) != vec4<u32>(0u);
    return select(vec4<f32>(0.0), select(val, -val, neg), inside);
}

// E[m][v0 .. v0+3] of the chunk, 0 past its last voxel or past row n.
fn e4(m: u32, v0: u32) -> vec4<f32> {
    let vv = vec4<u32>(v0) + vec4<u32>(0u, 1u, 2u, 3u);
    let inside = (vv < vec4<u32>(P.vc)) & vec4<bool>(m < P.n);
    let base = min(m, P.n - 1u) * P.vc;
    let vcl = min(vv, vec4<u32>(P.vc - 1u));
    let e = vec4<f32>(e_chunk[base + vcl.x], e_chunk[base + vcl.y], e_chunk[base + vcl.z], e_chunk[base + vcl.w]);
    return select(vec4<f32>(0.0), e, inside);
}

// One permutation's row of the register block (slot pp of the tile): maps, the workgroup
// maximum; returns its exceedance increments per voxel.
fn finish_perm(pp: u32, p0: u32, t: vec4<f32>, vin: vec4<bool>, obsv: vec4<f32>, vj: vec4<u32>) -> vec4<u32> {
    let p = p0 + pp;
    let valid = vin & vec4<bool>(p < P.n_perm);
    if ((P.flags & FLAG_MAPS) != 0u) {
        let row = (P.perm_offset + p - P.maps_base) * P.vc;
        if (valid.x) { maps[row + vj.x] = t.x; }
        if (valid.y) { maps[row + vj.y] = t.y; }
        if (valid.z) { maps[row + vj.z] = t.z; }
        if (valid.w) { maps[row + vj.w] = t.w; }
    }
    let k = select(vec4<u32>(0u), key_of4(t), valid);
    let km = max(max(k.x, k.y), max(k.z, k.w));
    // The WG_V invocations of a permutation row all target this slot; the plain load lets
    // most of them skip the (serialised) atomic once the row's maximum is in.
    if (km > atomicLoad(&wg_max[pp])) {
        atomicMax(&wg_max[pp], km);
    }
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
    let v0 = wid.x * TV;
    let p0 = wid.y * TP;
    let n = P.n;
    let q = P.q;
    let vc = P.vc;
    let is_t = P.kind == KIND_T;

    if (lidx < TP) {
        atomicStore(&wg_max[lidx], 0u);
    }
    if (lidx < TV) {
        atomicStore(&wg_cnt[lidx], 0u);
    }
    workgroupBarrier();

    // Folded sums per (permutation, voxel) of the block: |u|^2 and aux (see the header).
    var usq0 = vec4<f32>(0.0);
    var usq1 = vec4<f32>(0.0);
    var usq2 = vec4<f32>(0.0);
    var usq3 = vec4<f32>(0.0);
    var usq4 = vec4<f32>(0.0);
    var usq5 = vec4<f32>(0.0);
    var usq6 = vec4<f32>(0.0);
    var usq7 = vec4<f32>(0.0);
    var aux0 = vec4<f32>(0.0);
    var aux1 = vec4<f32>(0.0);
    var aux2 = vec4<f32>(0.0);
    var aux3 = vec4<f32>(0.0);
    var aux4 = vec4<f32>(0.0);
    var aux5 = vec4<f32>(0.0);
    var aux6 = vec4<f32>(0.0);
    var aux7 = vec4<f32>(0.0);

    for (var k = 0u; k < q; k++) {
        var acc0 = vec4<f32>(0.0);
        var acc1 = vec4<f32>(0.0);
        var acc2 = vec4<f32>(0.0);
        var acc3 = vec4<f32>(0.0);
        var acc4 = vec4<f32>(0.0);
        var acc5 = vec4<f32>(0.0);
        var acc6 = vec4<f32>(0.0);
        var acc7 = vec4<f32>(0.0);
        for (var m0 = 0u; m0 < n; m0 += KT) {
            // Coefficient slice: rows m0..m0+KT, the tile's permutations four to a word. Word
            // idx = lidx + r * WG_SIZE is row idx / TP4, permutations 4 * (idx % TP4) + 0..3;
            // WG_SIZE is a multiple of TP4, so an invocation fills the same four permutations
            // on every row, and with KT = 32 (m0 a multiple of 32) their sign bits for the
            // slice are in one word each, loaded once.
            let j = lidx % TP4;
            let pv = vec4<u32>(p0 + 4u * j) + vec4<u32>(0u, 1u, 2u, 3u);
            let pin = pv < vec4<u32>(P.n_perm);
            let gp = vec4<u32>(P.perm_offset) + min(pv, vec4<u32>(P.n_perm - 1u));
            var w = vec4<u32>(0u);
            if (P.wpp > 0u) {
                let wi = gp * P.wpp + vec4<u32>(m0 / 32u);
                w = vec4<u32>(perm_words[wi.x], perm_words[wi.y], perm_words[wi.z], perm_words[wi.w]);
            }
            for (var r = 0u; r < A_LOADS; r++) {
                let kk = lidx / TP4 + r * (WG_SIZE / TP4);
                a_sh[kk][j] = coef4(gp, pin, w, m0 + kk, k);
            }
            // Residual slice: rows m0..m0+KT, the tile's voxels four to a word.
            for (var r = 0u; r < E_LOADS; r++) {
                let idx = lidx + r * WG_SIZE;
                let kk = idx / TV4;
                let j = idx % TV4;
                e_sh[kk][j] = e4(m0 + kk, v0 + 4u * j);
            }
            workgroupBarrier();
            // One row kk per block below: one E word and two coefficient words feed 32 FMAs.
            // Unrolled by hand, 8 rows per trip: wgpu's Vulkan backend bounds every loop with
            // a counter and a break (force_loop_bounding), which can keep a driver from
            // unrolling it; here that costs one check per 256 FMAs. Only the rows that exist
            // are summed (the last slice's remainder one row per trip), so the padded rows of
            // the last slice cost nothing (N = 58: 58 row steps, not 64).
            let kmax = min(KT, n - m0);
            let k8 = kmax & ~7u;
            for (var kk = 0u; kk < k8; kk += 8u) {
                {
                    let ev = e_sh[kk][tx];
                    let c0 = a_sh[kk][ty];
                    let c1 = a_sh[kk][ty + WG_P];
                    acc0 = fma(vec4<f32>(c0.x), ev, acc0);
                    acc1 = fma(vec4<f32>(c0.y), ev, acc1);
                    acc2 = fma(vec4<f32>(c0.z), ev, acc2);
                    acc3 = fma(vec4<f32>(c0.w), ev, acc3);
                    acc4 = fma(vec4<f32>(c1.x), ev, acc4);
                    acc5 = fma(vec4<f32>(c1.y), ev, acc5);
                    acc6 = fma(vec4<f32>(c1.z), ev, acc6);
                    acc7 = fma(vec4<f32>(c1.w), ev, acc7);
                }
                {
                    let ev = e_sh[kk + 1u][tx];
                    let c0 = a_sh[kk + 1u][ty];
                    let c1 = a_sh[kk + 1u][ty + WG_P];
                    acc0 = fma(vec4<f32>(c0.x), ev, acc0);
                    acc1 = fma(vec4<f32>(c0.y), ev, acc1);
                    acc2 = fma(vec4<f32>(c0.z), ev, acc2);
                    acc3 = fma(vec4<f32>(c0.w), ev, acc3);
                    acc4 = fma(vec4<f32>(c1.x), ev, acc4);
                    acc5 = fma(vec4<f32>(c1.y), ev, acc5);
                    acc6 = fma(vec4<f32>(c1.z), ev, acc6);
                    acc7 = fma(vec4<f32>(c1.w), ev, acc7);
                }
                {
                    let ev = e_sh[kk + 2u][tx];
                    let c0 = a_sh[kk + 2u][ty];
                    let c1 = a_sh[kk + 2u][ty + WG_P];
                    acc0 = fma(vec4<f32>(c0.x), ev, acc0);
                    acc1 = fma(vec4<f32>(c0.y), ev, acc1);
                    acc2 = fma(vec4<f32>(c0.z), ev, acc2);
                    acc3 = fma(vec4<f32>(c0.w), ev, acc3);
                    acc4 = fma(vec4<f32>(c1.x), ev, acc4);
                    acc5 = fma(vec4<f32>(c1.y), ev, acc5);
                    acc6 = fma(vec4<f32>(c1.z), ev, acc6);
                    acc7 = fma(vec4<f32>(c1.w), ev, acc7);
                }
                {
                    let ev = e_sh[kk + 3u][tx];
                    let c0 = a_sh[kk + 3u][ty];
                    let c1 = a_sh[kk + 3u][ty + WG_P];
                    acc0 = fma(vec4<f32>(c0.x), ev, acc0);
                    acc1 = fma(vec4<f32>(c0.y), ev, acc1);
                    acc2 = fma(vec4<f32>(c0.z), ev, acc2);
                    acc3 = fma(vec4<f32>(c0.w), ev, acc3);
                    acc4 = fma(vec4<f32>(c1.x), ev, acc4);
                    acc5 = fma(vec4<f32>(c1.y), ev, acc5);
                    acc6 = fma(vec4<f32>(c1.z), ev, acc6);
                    acc7 = fma(vec4<f32>(c1.w), ev, acc7);
                }
                {
                    let ev = e_sh[kk + 4u][tx];
                    let c0 = a_sh[kk + 4u][ty];
                    let c1 = a_sh[kk + 4u][ty + WG_P];
                    acc0 = fma(vec4<f32>(c0.x), ev, acc0);
                    acc1 = fma(vec4<f32>(c0.y), ev, acc1);
                    acc2 = fma(vec4<f32>(c0.z), ev, acc2);
                    acc3 = fma(vec4<f32>(c0.w), ev, acc3);
                    acc4 = fma(vec4<f32>(c1.x), ev, acc4);
                    acc5 = fma(vec4<f32>(c1.y), ev, acc5);
                    acc6 = fma(vec4<f32>(c1.z), ev, acc6);
                    acc7 = fma(vec4<f32>(c1.w), ev, acc7);
                }
                {
                    let ev = e_sh[kk + 5u][tx];
                    let c0 = a_sh[kk + 5u][ty];
                    let c1 = a_sh[kk + 5u][ty + WG_P];
                    acc0 = fma(vec4<f32>(c0.x), ev, acc0);
                    acc1 = fma(vec4<f32>(c0.y), ev, acc1);
                    acc2 = fma(vec4<f32>(c0.z), ev, acc2);
                    acc3 = fma(vec4<f32>(c0.w), ev, acc3);
                    acc4 = fma(vec4<f32>(c1.x), ev, acc4);
                    acc5 = fma(vec4<f32>(c1.y), ev, acc5);
                    acc6 = fma(vec4<f32>(c1.z), ev, acc6);
                    acc7 = fma(vec4<f32>(c1.w), ev, acc7);
                }
                {
                    let ev = e_sh[kk + 6u][tx];
                    let c0 = a_sh[kk + 6u][ty];
                    let c1 = a_sh[kk + 6u][ty + WG_P];
                    acc0 = fma(vec4<f32>(c0.x), ev, acc0);
                    acc1 = fma(vec4<f32>(c0.y), ev, acc1);
                    acc2 = fma(vec4<f32>(c0.z), ev, acc2);
                    acc3 = fma(vec4<f32>(c0.w), ev, acc3);
                    acc4 = fma(vec4<f32>(c1.x), ev, acc4);
                    acc5 = fma(vec4<f32>(c1.y), ev, acc5);
                    acc6 = fma(vec4<f32>(c1.z), ev, acc6);
                    acc7 = fma(vec4<f32>(c1.w), ev, acc7);
                }
                {
                    let ev = e_sh[kk + 7u][tx];
                    let c0 = a_sh[kk + 7u][ty];
                    let c1 = a_sh[kk + 7u][ty + WG_P];
                    acc0 = fma(vec4<f32>(c0.x), ev, acc0);
                    acc1 = fma(vec4<f32>(c0.y), ev, acc1);
                    acc2 = fma(vec4<f32>(c0.z), ev, acc2);
                    acc3 = fma(vec4<f32>(c0.w), ev, acc3);
                    acc4 = fma(vec4<f32>(c1.x), ev, acc4);
                    acc5 = fma(vec4<f32>(c1.y), ev, acc5);
                    acc6 = fma(vec4<f32>(c1.z), ev, acc6);
                    acc7 = fma(vec4<f32>(c1.w), ev, acc7);
                }
            }
            for (var kk = k8; kk < kmax; kk++) {
                {
                    let ev = e_sh[kk][tx];
                    let c0 = a_sh[kk][ty];
                    let c1 = a_sh[kk][ty + WG_P];
                    acc0 = fma(vec4<f32>(c0.x), ev, acc0);
                    acc1 = fma(vec4<f32>(c0.y), ev, acc1);
                    acc2 = fma(vec4<f32>(c0.z), ev, acc2);
                    acc3 = fma(vec4<f32>(c0.w), ev, acc3);
                    acc4 = fma(vec4<f32>(c1.x), ev, acc4);
                    acc5 = fma(vec4<f32>(c1.y), ev, acc5);
                    acc6 = fma(vec4<f32>(c1.z), ev, acc6);
                    acc7 = fma(vec4<f32>(c1.w), ev, acc7);
                }
            }
            workgroupBarrier();
        }
        // Fold u_k as voxflip_stats::statistic does (k = 0, 1, ...).
        usq0 += acc0 * acc0;
        usq1 += acc1 * acc1;
        usq2 += acc2 * acc2;
        usq3 += acc3 * acc3;
        usq4 += acc4 * acc4;
        usq5 += acc5 * acc5;
        usq6 += acc6 * acc6;
        usq7 += acc7 * acc7;
        if (is_t) {
            if (k == 0u) {
                aux0 = acc0;
                aux1 = acc1;
                aux2 = acc2;
                aux3 = acc3;
                aux4 = acc4;
                aux5 = acc5;
                aux6 = acc6;
                aux7 = acc7;
            }
        } else if (k < P.s) {
            aux0 += acc0 * acc0;
            aux1 += acc1 * acc1;
            aux2 += acc2 * acc2;
            aux3 += acc3 * acc3;
            aux4 += acc4 * acc4;
            aux5 += acc5 * acc5;
            aux6 += acc6 * acc6;
            aux7 += acc7 * acc7;
        }
    }

    let vj = vec4<u32>(v0 + 4u * tx) + vec4<u32>(0u, 1u, 2u, 3u);
    let vin = vj < vec4<u32>(vc);
    let vcl = min(vj, vec4<u32>(vc - 1u));
    let ssv = vec4<f32>(vox[vcl.x], vox[vcl.y], vox[vcl.z], vox[vcl.w]);
    let obsv = vec4<f32>(vox[vc + vcl.x], vox[vc + vcl.y], vox[vc + vcl.z], vox[vc + vcl.w]);
    let pa = 4u * ty;
    let pb = 4u * (ty + WG_P);
    var cnt = vec4<u32>(0u);
    cnt += finish_perm(pa, p0, statistic4(P.kind, usq0, aux0, ssv, P.dof, P.inv_s), vin, obsv, vj);
    cnt += finish_perm(pa + 1u, p0, statistic4(P.kind, usq1, aux1, ssv, P.dof, P.inv_s), vin, obsv, vj);
    cnt += finish_perm(pa + 2u, p0, statistic4(P.kind, usq2, aux2, ssv, P.dof, P.inv_s), vin, obsv, vj);
    cnt += finish_perm(pa + 3u, p0, statistic4(P.kind, usq3, aux3, ssv, P.dof, P.inv_s), vin, obsv, vj);
    cnt += finish_perm(pb, p0, statistic4(P.kind, usq4, aux4, ssv, P.dof, P.inv_s), vin, obsv, vj);
    cnt += finish_perm(pb + 1u, p0, statistic4(P.kind, usq5, aux5, ssv, P.dof, P.inv_s), vin, obsv, vj);
    cnt += finish_perm(pb + 2u, p0, statistic4(P.kind, usq6, aux6, ssv, P.dof, P.inv_s), vin, obsv, vj);
    cnt += finish_perm(pb + 3u, p0, statistic4(P.kind, usq7, aux7, ssv, P.dof, P.inv_s), vin, obsv, vj);
    if ((P.flags & FLAG_OBSERVED) != 0u) {
        let c0 = 4u * tx;
        if (cnt.x != 0u) { atomicAdd(&wg_cnt[c0], cnt.x); }
        if (cnt.y != 0u) { atomicAdd(&wg_cnt[c0 + 1u], cnt.y); }
        if (cnt.z != 0u) { atomicAdd(&wg_cnt[c0 + 2u], cnt.z); }
        if (cnt.w != 0u) { atomicAdd(&wg_cnt[c0 + 3u], cnt.w); }
    }
    workgroupBarrier();
    if (lidx < TP) {
        let p = p0 + lidx;
        if (p < P.n_perm) {
            atomicMax(&max_bits[P.perm_offset + p], atomicLoad(&wg_max[lidx]));
        }
    }
    if (lidx < TV && (P.flags & FLAG_OBSERVED) != 0u) {
        let v = v0 + lidx;
        let c = atomicLoad(&wg_cnt[lidx]);
        if (v < vc && c != 0u) {
            atomicAdd(&counts[v], c);
        }
    }
}
