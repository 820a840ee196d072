// Exact TFCE of a batch of maps: TFCE(v) = integral_0^{T_v} e(h)^E h^H dh, e(h) the size of
// v's component of {T >= h}, from the component tree of each map. Host side: the engines
// crate's gpu/spatial/exact.rs; CPU port: src/cpu/tfce_exact.rs (the same f32 operations in
// the same order). Parameters and constants are generated from src/spatial.rs.
//
// One invocation per map (the union-find sweep is sequential), three passes, each its own
// dispatch, the maps of the batch in parallel:
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
// results[map * EXACT_RES_STRIDE]: the map's TFCE maximum (f32 bits, folded from 0), then the
// number of positive voxels (nodes).

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

// One radix pass of map `b`'s n entries from lanes (x, y) to (z, w) (`forward`) or back.
fn radix_pass(b: u32, base: u32, n: u32, shift: u32, forward: bool) {
    let hb = b * EXACT_HIST_BINS;
    for (var d = 0u; d < EXACT_HIST_BINS; d++) {
        hist[hb + d] = 0u;
    }
    for (var i = 0u; i < n; i++) {
        let e = work[base + i];
        let key = select(e.w, e.y, forward);
        let d = (key >> shift) & (EXACT_HIST_BINS - 1u);
        hist[hb + d] += 1u;
    }
    var sum = 0u;
    for (var d = 0u; d < EXACT_HIST_BINS; d++) {
        let c = hist[hb + d];
        hist[hb + d] = sum;
        sum += c;
    }
    for (var i = 0u; i < n; i++) {
        let e = work[base + i];
        let voxel = select(e.z, e.x, forward);
        let key = select(e.w, e.y, forward);
        let d = (key >> shift) & (EXACT_HIST_BINS - 1u);
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

@compute @workgroup_size(1)
fn sort_map(@builtin(workgroup_id) wid: vec3<u32>) {
    let b = wid.x;
    if b >= p.nmaps {
        return;
    }
    let base = b * p.v;
    var n = 0u;
    for (var v = 0u; v < p.v; v++) {
        let x = maps[base + v];
        tfce[base + v] = 0.0;
        if is_finite(x) && x > 0.0 {
            work[base + n].x = v;
            work[base + n].y = sort_key(x);
            n += 1u;
        }
    }
    results[b * EXACT_RES_STRIDE + 1u] = n;
    // Three passes end in the pong lanes (z, w).
    radix_pass(b, base, n, 0u, true);
    radix_pass(b, base, n, EXACT_DIGIT_BITS, false);
    radix_pass(b, base, n, 2u * EXACT_DIGIT_BITS, true);
}

// Root of voxel x of the map at `base`, halving the path on the way.
fn find(base: u32, x0: u32) -> u32 {
    var x = x0;
    loop {
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

@compute @workgroup_size(1)
fn grow_tree(@builtin(workgroup_id) wid: vec3<u32>) {
    let b = wid.x;
    if b >= p.nmaps {
        return;
    }
    let base = b * p.v;
    let n = results[b * EXACT_RES_STRIDE + 1u];
    for (var v = 0u; v < p.v; v++) {
        work[base + v].x = NONE;
    }
    var child: array<u32, EXACT_MAX_NEIGHBOURS>;
    var child_size: array<u32, EXACT_MAX_NEIGHBOURS>;
    for (var i = 0u; i < n; i++) {
        let x = work[base + i].z;
        let w = height_weight(maps[base + x]);
        work[base + x].x = x;
        var root = x;
        var size = 1u;
        var nc = 0u;
        let row = x * p.width;
        for (var j = 0u; j < p.width; j++) {
            let u = nbrs[row + j];
            if u >= p.v {
                break; // the padding after the in-mask neighbours
            }
            if work[base + u].x == NONE {
                continue;
            }
            let ru = find(base, u);
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
            let edge = w * size_gain(size, child_size[k]);
            let c = base + child[k];
            node[c].x = i;
            node[c].y = bitcast<u32>(edge);
        }
    }
}

@compute @workgroup_size(1)
fn push_down(@builtin(workgroup_id) wid: vec3<u32>) {
    let b = wid.x;
    if b >= p.nmaps {
        return;
    }
    let base = b * p.v;
    let n = results[b * EXACT_RES_STRIDE + 1u];
    var best = 0.0;
    for (var k = 0u; k < n; k++) {
        let i = n - 1u - k;
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
        best = max(best, t);
    }
    results[b * EXACT_RES_STRIDE] = bitcast<u32>(best);
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
