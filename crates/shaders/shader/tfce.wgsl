// Stepwise TFCE (randomise's discretization) of a batch of maps, with the bindings and passes
// of label_components.wgsl. Host side: the engines crate's gpu/spatial.rs; CPU port:
// src/cpu/tfce.rs.
//
// The levels h_k (those with h_k^H != 0; from the host, h_k accumulated in f32 as FSL does)
// run from the top down: the set {T > h_k} only grows as k falls, so its components only
// merge, and one union-find serves all levels, each voxel hooked once, when it enters. The
// voxels above the current level are kept in a list (in entry order), so that each level
// works in proportion to them. Per level k, top down:
//
//   enter (whole batch, a streaming compare): the voxels with h_k < T <= h_{k+1}, T finite,
//     whose neighbour row is not marked EXCLUDED_ROW (the grid's border), get parent = self and are appended to the list (the first level also zeroes tfce and
//     parents); every voxel above h_k gets its size slot `cur` reset
//   -> set_args (one invocation: indirect arguments for the new entries and the whole list)
//   -> hook (the new entries: to their smaller active neighbours and to their larger ones
//      above h_{k+1})
//   -> compress_measure (whole list: first the term of level k + 1 for the voxels above it,
//      tfce += sizepow[size] * h_{k+1}^H, from the root and size slot the previous level
//      left; then this level's root, kept in acc slot 2, and size, into slot `cur`)
//   after the last level: accumulate (its terms, and the per-map maximum); tfce_counts.
//
// Determinism: a root is only ever hooked under a smaller index, so every root is the
// smallest voxel of its component whatever the order of the unions (and of the list); sizes
// are integer atomics; each voxel's TFCE is summed by its own invocation, one term per
// level from the top level down, with the twin's f32 operations in the twin's order. Sizes
// alternate between acc slots 0 and 1 by level parity, so that a level's sizes are counted
// while the level above's are still read.

#import label_components

var<workgroup> wg_count: atomic<u32>;
var<workgroup> wg_base: u32;

// Appends batch index i to the active list when `keep`, one global atomic per workgroup.
// Called in uniform control flow by every invocation of the workgroup.
fn append(keep: bool, i: u32, lid: u32) {
    if lid == 0u {
        atomicStore(&wg_count, 0u);
    }
    workgroupBarrier();
    var slot = 0u;
    if keep {
        slot = atomicAdd(&wg_count, 1u);
    }
    workgroupBarrier();
    if lid == 0u {
        wg_base = atomicAdd(&list[L_COUNT], atomicLoad(&wg_count));
    }
    workgroupBarrier();
    if keep {
        atomicStore(&list[LIST_HEAD + wg_base + slot], i);
    }
}

@compute @workgroup_size(WG)
fn enter(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = thread_index(gid, nwg);
    var keep = false;
    if i < p.v * p.nmaps {
        let x = maps[i];
        // A voxel whose row is marked EXCLUDED_ROW (the grid's border) never enters.
        keep = is_finite(x) && x > p.thr && !(x > p.next_thr) && nbrs[(i % p.v) * p.width] != EXCLUDED_ROW;
        if (p.flags & FLAG_FIRST) != 0u {
            tfce[i] = 0.0;
            atomicStore(&parent[i], NONE);
        }
        if keep {
            atomicStore(&parent[i], i % p.v);
        }
        if is_finite(x) && x > p.thr {
            atomicStore(&acc[3u * i + p.cur], 0u);
        }
    }
    append(keep, i, lid);
}

fn groups_of(n: u32, at: u32) {
    let wg = (n + WG - 1u) / WG;
    let wx = min(wg, p.maxd);
    args[at] = wx;
    args[at + 1u] = select(1u, (wg + wx - 1u) / wx, wx > 0u);
    args[at + 2u] = 1u;
}

// One invocation: the indirect arguments of the new entries (args[0..3]) and of the whole
// list (args[4..7]), 64 threads per workgroup and x at most p.maxd; where the entries of
// this level start and the next level's will; the list length added to the 64-bit count of
// voxel-levels processed.
@compute @workgroup_size(1)
fn set_args() {
    let n = atomicLoad(&list[L_COUNT]);
    let s = atomicLoad(&list[L_NEXT]);
    atomicStore(&list[L_NEW], s);
    atomicStore(&list[L_NEXT], n);
    groups_of(n - s, 0u);
    groups_of(n, 4u);
    let lo = atomicLoad(&list[L_WORK]);
    atomicStore(&list[L_WORK], lo + n);
    atomicAdd(&list[L_WORK + 1u], select(0u, 1u, lo + n < lo));
}

// The level above's term for the voxels above it (its root in acc slot 2, its sizes in slot
// 1 - cur, neither written here), then roots (compressed parents) and component sizes in
// one pass: after `hook` the forest no longer changes, so find() gives the final root
// whatever the other invocations write.
@compute @workgroup_size(WG)
fn compress_measure(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = active_voxel(thread_index(gid, nwg));
    if i == NONE {
        return;
    }
    let base = (i / p.v) * p.v;
    if (p.flags & FLAG_PREV) != 0u && maps[i] > p.next_thr {
        let s = atomicLoad(&acc[3u * (base + atomicLoad(&acc[3u * i + 2u])) + 1u - p.cur]);
        let term = sizepow[s] * p.next_hpow;
        tfce[i] = tfce[i] + term;
    }
    let r = find(base, i - base);
    atomicStore(&parent[i], r);
    atomicStore(&acc[3u * i + 2u], r);
    atomicAdd(&acc[3u * (base + r) + p.cur], 1u);
}

// After the last level: its term for every active voxel, and the per-map TFCE maximum
// (results start at key_of(0), as the CPU folds from 0; voxels that never enter stay 0).
@compute @workgroup_size(WG)
fn accumulate(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = active_voxel(thread_index(gid, nwg));
    if i == NONE {
        return;
    }
    let b = i / p.v;
    let s = atomicLoad(&acc[3u * (b * p.v + atomicLoad(&acc[3u * i + 2u])) + p.cur]);
    let term = sizepow[s] * p.hpow;
    let t = tfce[i] + term;
    tfce[i] = t;
    // Most voxels are below the map's running maximum: skip their atomic.
    let k = key_of(t);
    if k > atomicLoad(&results[b * RES_STRIDE + RES_TFCE]) {
        atomicMax(&results[b * RES_STRIDE + RES_TFCE], k);
    }
}

// Per-voxel exceedance counts tfce_jv >= observed_v over the maps of the batch; one thread
// per voxel, no atomics.
@compute @workgroup_size(WG)
fn tfce_counts(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let v = thread_index(gid, nwg);
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
