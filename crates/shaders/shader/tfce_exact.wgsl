// Exact TFCE of a batch of maps: TFCE(v) = integral_0^{T_v} e(h)^E h^H dh, e(h) the size of
// v's component of {T >= h}, from the component tree of each map. Host side: the engines
// crate's gpu/spatial/exact.rs; CPU port: src/cpu/tfce_exact.rs (the same f32 operations in
// the same order). Parameters and constants are generated from src/spatial.rs.
//
// One invocation per map (the union-find sweep is sequential), the maps of the batch in
// parallel, three stages run as one resumable state machine (`exact_step`, see S_* below):
//
//   sort_map: the positive finite voxels of the map, stable LSD radix sort by decreasing
//     value (3 passes of 11 bits; ties in increasing voxel index); zeroes the map's TFCE.
//   grow_tree: adds the voxels in that order with union-find. Adding the i-th voxel creates
//     tree node i: the component it forms (with the components it joins) at height
//     h_i = T of that voxel; the node of each component it absorbs gets node i as parent.
//   push_down: the values, from the last node (lowest, the roots) to the first.
//
// No cancellation. With s_k the node sizes along a voxel's path to the root (increasing) and
// h_k their heights (decreasing, h_{m+1} = 0), summation by parts turns the integral
//   sum_k s_k^E (W(h_k) - W(h_{k+1})),   W(h) = h^{H+1} / (H + 1),
// into a sum of positive terms with no difference of heights:
//   W(h_0) s_0^E + sum_{k>=1} W(h_k) (s_k^E - s_{k-1}^E).
// So each node carries the weight of the edge to its parent, W(h_parent) (s_parent^E -
// s_node^E), and its creating voxel's own term W(h_i) s_i^E; a voxel's value is the sum of
// the edge weights on its path plus its own term. The size differences come from a table of
// s^E / (H + 1) in two f32 (hi + lo, from f64 on the host), so that a difference of two
// nearby sizes keeps its relative precision; the path sums are compensated (Neumaier), each
// node adding its edge to its parent's (sum, compensation) pair, so their error does not
// grow with the depth of the tree.
//
// Scratch per voxel-map (index base + i, base = map * v), reused between passes:
//   work.x: sort ping (voxel) | grow: union-find parent (by voxel) | push: path sum (by node)
//   work.y: sort ping (key)   | grow: component size at roots      | push: compensation
//   work.z: sort pong (voxel) -> the voxel of node i (the sorted order), read by every pass
//   work.w: sort pong (key)   | grow: current node of a root's component
//   node: (parent node or NONE, edge weight bits, own term bits, unused), by node.
// results[map * EXACT_RES_STRIDE + S_*]: the map's TFCE maximum (f32 bits, folded from 0),
// the number of positive voxels (nodes), and the state machine's phase, cursor and scan sum.

#import tfce_exact_params

@group(0) @binding(0) var<uniform> p: TfceExactParams;
@group(0) @binding(1) var<storage, read> nbrs: array<u32>;
@group(0) @binding(2) var<storage, read> maps: array<f32>;
// s^E / (H + 1) for s = 0..=v, as hi + lo.
@group(0) @binding(3) var<storage, read> sizepow: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> tfce: array<f32>;
@group(0) @binding(5) var<storage, read_write> results: array<u32>;
@group(0) @binding(6) var<storage, read> observed: array<f32>;
@group(0) @binding(7) var<storage, read_write> counts: array<u32>;
@group(0) @binding(8) var<storage, read_write> work: array<vec4<u32>>;
@group(0) @binding(9) var<storage, read_write> node: array<vec4<u32>>;
// EXACT_HIST_BINS counters per map.
@group(0) @binding(10) var<storage, read_write> hist: array<u32>;

fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// Sort key: ascending keys are decreasing positive values (their bit patterns order like the
// values), in 31 bits.
fn sort_key(x: f32) -> u32 {
    return 0x7f7fffffu - bitcast<u32>(x);
}

// W(h) * (H + 1) = h^(H+1): by repeated multiplication when H + 1 is a small integer (then
// no pow, and the CPU port gives the same bits), else pow.
fn height_weight(h: f32) -> f32 {
    if p.int_power == 0u {
        return pow(h, p.h_plus_1);
    }
    var r = h;
    for (var k = 1u; k < p.int_power; k++) {
        r = r * h;
    }
    return r;
}

// s_new^E - s_old^E (over H + 1) from the two-float table, s_new > s_old: the hi parts of
// nearby sizes subtract exactly (Sterbenz), so the difference keeps the table's precision.
fn size_gain(s_new: u32, s_old: u32) -> f32 {
    let a = sizepow[s_new];
    let b = sizepow[s_old];
    return (a.x - b.x) + (a.y - b.y);
}

// Neumaier's compensated sum: (sum, compensation) + x.
fn add_compensated(acc: vec2<f32>, x: f32) -> vec2<f32> {
    let t = acc.x + x;
    var c = acc.y;
    if abs(acc.x) >= abs(x) {
        c = c + ((acc.x - t) + x);
    } else {
        c = c + ((x - t) + acc.x);
    }
    return vec2<f32>(t, c);
}

// Per-map state in results[map * EXACT_RES_STRIDE + S_*]: the passes run as a resumable
// state machine, each dispatch doing at most `p.budget` loop iterations per map (llvmpipe
// ends any shader invocation's loops after 65,535 iterations in all, silently; a desktop
// GPU's watchdog wants short dispatches too). The host repeats the dispatch until every map
// reaches PH_DONE. Phases: PH_GATHER; then for radix pass k = 0..3 the steps zero / count /
// scan / scatter (phase 1 + 4k + step); PH_INIT (union-find reset); PH_GROW; PH_PUSH.
const S_MAX: u32 = 0u;
const S_N: u32 = 1u;
const S_PHASE: u32 = 2u;
const S_CURSOR: u32 = 3u;
const S_SUM: u32 = 4u;
const PH_GATHER: u32 = 0u;
const PH_INIT: u32 = 13u;
const PH_GROW: u32 = 14u;
const PH_PUSH: u32 = 15u;
const PH_DONE: u32 = 16u;
// Iterations reserved per step: a voxel of grow_voxel costs at most width * (1 + find) +
// children <= 26 * 34 + 26 (union by size keeps trees below 32 levels for V < 2^32).
const STEP_COST: u32 = 1024u;

// Root of voxel x of the map at `base`, halving the path on the way; counts its iterations.
fn find(base: u32, x0: u32, spent: ptr<function, u32>) -> u32 {
    var x = x0;
    loop {
        *spent += 1u;
        let q = work[base + x].x;
        if q == x {
            return x;
        }
        let g = work[base + q].x;
        work[base + x].x = g;
        x = g;
    }
    return x;
}

// Adds the i-th voxel of the order: node i (see the header).
fn grow_voxel(base: u32, i: u32, spent: ptr<function, u32>) {
    var child: array<u32, EXACT_MAX_NEIGHBOURS>;
    var child_size: array<u32, EXACT_MAX_NEIGHBOURS>;
    let x = work[base + i].z;
    let w = height_weight(maps[base + x]);
    work[base + x].x = x;
    var root = x;
    var size = 1u;
    var nc = 0u;
    let row = x * p.width;
    for (var j = 0u; j < p.width; j++) {
        *spent += 1u;
        let u = nbrs[row + j];
        if u >= p.v {
            break; // the padding after the in-mask neighbours
        }
        if work[base + u].x == NONE {
            continue;
        }
        let ru = find(base, u, spent);
        if ru == root {
            continue;
        }
        let su = work[base + ru].y;
        child[nc] = work[base + ru].w;
        child_size[nc] = su;
        nc += 1u;
        // Union by size (ties: the neighbour's root).
        if su >= size {
            work[base + root].x = ru;
            root = ru;
        } else {
            work[base + ru].x = root;
        }
        size += su;
    }
    work[base + root].y = size;
    work[base + root].w = i;
    let own = w * sizepow[size].x;
    node[base + i] = vec4<u32>(NONE, 0u, bitcast<u32>(own), 0u);
    for (var k = 0u; k < nc; k++) {
        *spent += 1u;
        let edge = w * size_gain(size, child_size[k]);
        let c = base + child[k];
        node[c].x = i;
        node[c].y = bitcast<u32>(edge);
    }
}

// The value of node i from its parent's path sum (see the header); returns the voxel's TFCE.
fn push_node(base: u32, i: u32) -> f32 {
    let nd = node[base + i];
    var acc = vec2<f32>(0.0, 0.0);
    if nd.x != NONE {
        let up = work[base + nd.x];
        acc = vec2<f32>(bitcast<f32>(up.x), bitcast<f32>(up.y));
    }
    acc = add_compensated(acc, bitcast<f32>(nd.y));
    work[base + i].x = bitcast<u32>(acc.x);
    work[base + i].y = bitcast<u32>(acc.y);
    let own = add_compensated(acc, bitcast<f32>(nd.z));
    let t = own.x + own.y;
    tfce[base + work[base + i].z] = t;
    return t;
}

// One element of radix pass k's step s for map b: zero or scan a bin (e < 2048), count or
// scatter entry e. Pass k moves lanes (x, y) to (z, w) for even k, back for odd k, so three
// passes end in (z, w).
fn radix_step(b: u32, base: u32, k: u32, s: u32, e: u32) {
    let hb = b * EXACT_HIST_BINS;
    let st = b * EXACT_RES_STRIDE;
    let forward = (k & 1u) == 0u;
    let shift = k * EXACT_DIGIT_BITS;
    if s == 0u {
        hist[hb + e] = 0u;
        results[st + S_SUM] = 0u;
    } else if s == 2u {
        let c = hist[hb + e];
        let sum = results[st + S_SUM];
        hist[hb + e] = sum;
        results[st + S_SUM] = sum + c;
    } else {
        let x = work[base + e];
        let voxel = select(x.z, x.x, forward);
        let key = select(x.w, x.y, forward);
        let d = (key >> shift) & (EXACT_HIST_BINS - 1u);
        if s == 1u {
            hist[hb + d] += 1u;
        } else {
            let at = base + hist[hb + d];
            hist[hb + d] += 1u;
            if forward {
                work[at].z = voxel;
                work[at].w = key;
            } else {
                work[at].x = voxel;
                work[at].y = key;
            }
        }
    }
}

// Up to p.budget iterations of map wid.x's state machine (see S_* above).
@compute @workgroup_size(1)
fn exact_step(@builtin(workgroup_id) wid: vec3<u32>) {
    let b = wid.x;
    if b >= p.nmaps {
        return;
    }
    let base = b * p.v;
    let st = b * EXACT_RES_STRIDE;
    var phase = results[st + S_PHASE];
    var cur = results[st + S_CURSOR];
    var n = results[st + S_N];
    var best = bitcast<f32>(results[st + S_MAX]);
    var spent = 0u;
    loop {
        if phase == PH_DONE || spent + STEP_COST > p.budget {
            break;
        }
        spent += 1u;
        if phase == PH_GATHER {
            if cur == p.v {
                phase = 1u;
                cur = 0u;
                continue;
            }
            let x = maps[base + cur];
            tfce[base + cur] = 0.0;
            // A voxel whose row is marked EXCLUDED_ROW (the grid's border) is not enhanced.
            if is_finite(x) && x > 0.0 && nbrs[cur * p.width] != EXCLUDED_ROW {
                work[base + n].x = cur;
                work[base + n].y = sort_key(x);
                n += 1u;
            }
            cur += 1u;
        } else if phase < PH_INIT {
            let k = (phase - 1u) / 4u;
            let s = (phase - 1u) % 4u;
            let len = select(n, EXACT_HIST_BINS, s == 0u || s == 2u);
            if cur == len {
                phase += 1u;
                cur = 0u;
                continue;
            }
            radix_step(b, base, k, s, cur);
            cur += 1u;
        } else if phase == PH_INIT {
            if cur == p.v {
                phase = PH_GROW;
                cur = 0u;
                continue;
            }
            work[base + cur].x = NONE;
            cur += 1u;
        } else if phase == PH_GROW {
            if cur == n {
                phase = PH_PUSH;
                cur = 0u;
                continue;
            }
            grow_voxel(base, cur, &spent);
            cur += 1u;
        } else {
            if cur == n {
                phase = PH_DONE;
                continue;
            }
            best = max(best, push_node(base, n - 1u - cur));
            cur += 1u;
        }
    }
    results[st + S_PHASE] = phase;
    results[st + S_CURSOR] = cur;
    results[st + S_N] = n;
    results[st + S_MAX] = bitcast<u32>(best);
}

// Per-voxel exceedance counts tfce_jv >= observed_v over the maps of the batch; one thread
// per voxel.
@compute @workgroup_size(WG)
fn exact_counts(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let v = gid.x + gid.y * nwg.x * WG;
    if v >= p.v {
        return;
    }
    let o = observed[v];
    var c = counts[v];
    for (var b = 0u; b < p.nmaps; b++) {
        c += select(0u, 1u, tfce[b * p.v + v] >= o);
    }
    counts[v] = c;
}
