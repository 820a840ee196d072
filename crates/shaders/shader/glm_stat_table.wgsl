// glm_stat_table: the table-driven product for sign flips (DESIGN.md, "Sign flips without
// multiplications"), with the same buffers, epilogue and reductions as glm_stat.wgsl (read
// that file's header first). CPU port: src/cpu/glm_stat_table.rs, the same f32 operations in
// the same order. The host runs it for sign-flip sets without row sources only (FLAG_SRC is
// never set here).
//
// For permutation p (signs s_p) and voxel v, u_k = sum_m s_p(m) w_k(m), w_k(m) = Q[m][k] E[m][v].
// The rows are cut into blocks of BITS rows (the last padded with zero rows). For a block
// with rows m0 .. m0+BITS-1 and a code c (bit r = row m0+r negated) the table holds
//   T(c) = (((w(m0+B-1)' + w(m0+B-2)') + ...) + w(m0)'),  w' = -w where c's bit is set,
// the BITS terms summed from the block's last row down to its first: a sum of exactly BITS
// terms in a fixed order, rounded like a direct sum. Only the half with the top bit (row
// m0+B-1) clear is stored: T(c) = -T(~c) exactly, since rounding is symmetric in sign, so a
// code with the top bit set reads the entry of its complement and flips the sign. Then
//   u_k = ((0 + T_0(c_0)) + T_1(c_1)) + ...   over the blocks in order,
// N/BITS additions per coefficient instead of N multiply-adds.
//
// Tiling: a workgroup of WG_V x WG_P = 16 x 16 invocations owns TV = 64 voxels by TP = 128
// permutations; invocation (tx, ty) holds voxels v0 + 4 tx .. +3 (one vec4) of permutations
// p0 + 4 ty + i (acc0..acc3) and p0 + 4 (ty + WG_P) + i (acc4..acc7), i < 4, as in
// glm_stat_wide.wgsl: their codes are two vec4 words of codes_sh. k is the outer loop (one u_k in registers at a
// time, folded as voxflip_stats::statistic folds it). Per k, the rows are walked in stages of
// `bps` blocks (as many as fit TABLE_ROWS table rows, W_ROWS rows of w and STAGE_BLOCKS code
// rows), each in three phases separated by barriers:
//   (a) w_sh[row][j] = Q[m][k] * E[m][v0+4j..] for the stage's rows, and codes_sh[blk][pp]:
//       the table row (and sign, bit 31) that permutation pp reads for block blk;
//   (b) the tables: table[blk * H + e][j], e < H = 2^(BITS-1), each entry summed from w_sh;
//   (c) the lookups: acc_i += +-table[code of permutation i, block blk][tx], block by block.
// Workgroup memory: 16 KiB of tables, 8 KiB of w, 4 KiB of codes, the maxima and the counts
// (WORKGROUP_STORAGE_BYTES in src/glm_stat_table.rs, under lavapipe's 32 KiB).
//
// The tiling constants (WG_V, WG_P, TV, TV4, TP, TP4, WG_SIZE, TABLE_ROWS, W_ROWS, STAGE_BLOCKS,
// W_LOADS, CODE_LOADS, T_LOADS) are generated from src/glm_stat_table.rs, the parameters and
// flags from src/glm_stat.rs.

#import glm_stat_table_tiling
#import glm_bindings
#import keys
#import statistic

// Rows per block, 1 ..= MAX_BITS (the host's plan; a pipeline per value).
override BITS: u32 = 4u;

var<workgroup> table: array<array<vec4<f32>, TV4>, TABLE_ROWS>;
var<workgroup> w_sh: array<array<vec4<f32>, TV4>, W_ROWS>;
var<workgroup> codes_sh: array<array<vec4<u32>, TP4>, STAGE_BLOCKS>;
var<workgroup> wg_max: array<atomic<u32>, TP>;
var<workgroup> wg_cnt: array<atomic<u32>, TV>;

// w_k(m) for voxels v0 .. v0+3 of the chunk; 0 past row n or the chunk's last voxel.
fn w4(m: u32, v0: u32, k: u32) -> vec4<f32> {
    let vv = vec4<u32>(v0) + vec4<u32>(0u, 1u, 2u, 3u);
    let inside = (vv < vec4<u32>(P.vc)) & vec4<bool>(m < P.n);
    let mc = min(m, P.n - 1u);
    let base = mc * P.vc;
    let vcl = min(vv, vec4<u32>(P.vc - 1u));
    let e = vec4<f32>(e_chunk[base + vcl.x], e_chunk[base + vcl.y], e_chunk[base + vcl.z], e_chunk[base + vcl.w]);
    return select(vec4<f32>(0.0), vec4<f32>(qbasis[mc * P.q + k]) * e, inside);
}

// The sign bits of rows m0 .. m0+BITS-1 of permutation gp (bits past row n cleared).
fn block_code(gp: u32, m0: u32) -> u32 {
    let wi = m0 / 32u;
    let sh = m0 % 32u;
    let base = gp * P.wpp;
    let lo = perm_words[base + min(wi, P.wpp - 1u)] >> sh;
    // The block runs into the next word only when sh + BITS > 32 (then 32 - sh < 32).
    let spill = sh + BITS > 32u;
    let hi = select(0u, perm_words[base + min(wi + 1u, P.wpp - 1u)] << ((32u - sh) % 32u), spill);
    let rows = select(0u, min(BITS, P.n - m0), m0 < P.n);
    let mask = (1u << rows) - 1u;
    return (lo | hi) & mask;
}

// Adds +-t: the sign bit of `c` flips t's (an exact negation).
fn lookup(acc: vec4<f32>, c: u32, tx: u32) -> vec4<f32> {
    let t = table[c & 0x7fffffffu][tx];
    return acc + bitcast<vec4<f32>>(bitcast<vec4<u32>>(t) ^ vec4<u32>(c & 0x80000000u));
}

// One permutation's row of the block (slot pp of the tile): maps, the workgroup maximum;
// returns its exceedance increments per voxel. As in glm_stat_wide.wgsl.
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
    let h = 1u << (BITS - 1u);
    let bps = min(min(TABLE_ROWS / h, W_ROWS / BITS), STAGE_BLOCKS);
    let stage_rows = bps * BITS;
    let nblocks = (n + BITS - 1u) / BITS;

    if (lidx < TP) {
        atomicStore(&wg_max[lidx], 0u);
    }
    if (lidx < TV) {
        atomicStore(&wg_cnt[lidx], 0u);
    }
    workgroupBarrier();

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
        for (var m0 = 0u; m0 < n; m0 += stage_rows) {
            let blk0 = m0 / BITS;
            let sb = min(bps, nblocks - blk0);
            // (a) The stage's rows of w (rows past the stage are written but never read).
            for (var r = 0u; r < W_LOADS; r++) {
                let idx = lidx + r * WG_SIZE;
                let row = idx / TV4;
                let j = idx % TV4;
                w_sh[row][j] = w4(m0 + row, v0 + 4u * j, k);
            }
            // ... and each permutation's table row per block: entry e of the half table, the
            // complement's with the sign bit when the code's top bit is set.
            for (var r = 0u; r < CODE_LOADS; r++) {
                let idx = lidx + r * WG_SIZE;
                let b = idx / TP4;
                let j4 = idx % TP4;
                let pv = vec4<u32>(p0 + 4u * j4) + vec4<u32>(0u, 1u, 2u, 3u);
                let gp = vec4<u32>(P.perm_offset) + min(pv, vec4<u32>(P.n_perm - 1u));
                let mb = m0 + b * BITS;
                let c = vec4<u32>(block_code(gp.x, mb), block_code(gp.y, mb), block_code(gp.z, mb), block_code(gp.w, mb));
                let top = (c >> vec4<u32>(BITS - 1u)) & vec4<u32>(1u);
                let e = select(c, ~c, top != vec4<u32>(0u)) & vec4<u32>(h - 1u);
                codes_sh[b][j4] = (vec4<u32>(min(b, bps - 1u) * h) + e) | (top << vec4<u32>(31u));
            }
            workgroupBarrier();
            // (b) The tables: entry e of block b, the block's rows summed last to first.
            for (var r = 0u; r < T_LOADS; r++) {
                let idx = lidx + r * WG_SIZE;
                let er = idx / TV4;
                let j = idx % TV4;
                let e = er % h;
                // Table rows past the stage's blocks (when w or the codes limit bps) repeat
                // its last block; they are never read.
                let rb = min(er / h, bps - 1u) * BITS;
                var x = w_sh[rb + BITS - 1u][j];
                for (var i = 1u; i < BITS; i++) {
                    let row = BITS - 1u - i;
                    let w = w_sh[rb + row][j];
                    x = x + select(w, -w, ((e >> row) & 1u) != 0u);
                }
                table[er][j] = x;
            }
            workgroupBarrier();
            // (c) One table row per block and permutation.
            for (var b = 0u; b < sb; b++) {
                let ca = codes_sh[b][ty];
                let cb = codes_sh[b][ty + WG_P];
                acc0 = lookup(acc0, ca.x, tx);
                acc1 = lookup(acc1, ca.y, tx);
                acc2 = lookup(acc2, ca.z, tx);
                acc3 = lookup(acc3, ca.w, tx);
                acc4 = lookup(acc4, cb.x, tx);
                acc5 = lookup(acc5, cb.y, tx);
                acc6 = lookup(acc6, cb.z, tx);
                acc7 = lookup(acc7, cb.w, tx);
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
    var cnt = vec4<u32>(0u);
    let pa = 4u * ty;
    let pb = 4u * (ty + WG_P);
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
