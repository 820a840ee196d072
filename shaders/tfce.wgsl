// Stepwise TFCE (randomise's discretization) of a batch of maps. Appended to
// label_components.wgsl, whose bindings and passes it uses. Host side:
// src/engine/gpu/spatial.rs; CPU twin: src/engine/gpu/cpu/tfce.rs.
//
// The levels h_0 < h_1 < ... (those with h_k^H != 0; from the host, h_k accumulated in f32
// as FSL does) only ever shrink the set {T > h_k}, so each level works on a compacted list
// of the (map, voxel) pairs still above it rather than on the whole batch:
//
//   tfce_start (whole batch: tfce = 0; list 0 = {x > h_0, x finite}) -> set_args
//   per level k, on list c = k % 2 (indirect dispatches sized by set_args on the device):
//     hook -> compress_measure (roots, sizes into acc slot c)
//     -> accumulate (tfce += sizepow[size] * h_k^H; the voxels still above h_{k+1} go to
//        list 1 - c with their parent and size slot 1 - c reset, the others are final:
//        parent NONE and their TFCE into the map's maximum) -> set_args (list 1 - c)
//   tfce_counts (whole batch).
//
// Determinism: the labels are min-index roots and the sizes integer atomics, whatever the
// order of the lists; each voxel's TFCE is summed by its own invocation in level order, with
// the twin's f32 operations. Sizes alternate between acc slots 0 and 1 by level parity so
// that `accumulate` may reset the next level's slot while other voxels read this level's.

var<workgroup> wg_count: atomic<u32>;
var<workgroup> wg_base: u32;

// Appends batch index i to list `dst` when `keep`, one global atomic per workgroup. Called in
// uniform control flow by every invocation of the workgroup.
fn append(keep: bool, i: u32, dst: u32, lid: u32) {
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
        wg_base = atomicAdd(&list[dst], atomicLoad(&wg_count));
    }
    workgroupBarrier();
    if keep {
        atomicStore(&list[LIST_HEAD + dst * p.v * p.nmaps + wg_base + slot], i);
    }
}

// Whole batch: zero the TFCE maps, and put the voxels above the first level (p.next_thr;
// +inf when there is none) into list 0 as single-voxel components of size slot 0.
@compute @workgroup_size(64)
fn tfce_start(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = thread_index(gid, nwg);
    var keep = false;
    if i < p.v * p.nmaps {
        tfce[i] = 0.0;
        let x = maps[i];
        keep = is_finite(x) && x > p.next_thr;
        atomicStore(&parent[i], select(NONE, i % p.v, keep));
        if keep {
            atomicStore(&acc[3u * i], 0u);
        }
    }
    append(keep, i, 0u, lid);
}

// One invocation: the indirect arguments for list p.cur (64 threads per workgroup, x at most
// p.maxd), the other list emptied for the next compaction, and the list length added to the
// 64-bit count of voxel-levels processed.
@compute @workgroup_size(1)
fn set_args() {
    let n = atomicLoad(&list[p.cur]);
    let wg = (n + WG - 1u) / WG;
    let wx = min(wg, p.maxd);
    args[0] = wx;
    args[1] = select(1u, (wg + wx - 1u) / wx, wx > 0u);
    args[2] = 1u;
    atomicStore(&list[1u - p.cur], 0u);
    let lo = atomicLoad(&list[2u]);
    atomicStore(&list[2u], lo + n);
    atomicAdd(&list[3u], select(0u, 1u, lo + n < lo));
}

// Roots (compressed parents) and component sizes in one pass: after `hook` the forest no
// longer changes, so find() gives the final root whatever the other invocations write.
@compute @workgroup_size(64)
fn compress_measure(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = voxel_of(thread_index(gid, nwg));
    if i == NONE {
        return;
    }
    let base = (i / p.v) * p.v;
    let r = find(base, i - base);
    atomicStore(&parent[i], r);
    atomicAdd(&acc[3u * (base + r) + p.cur], 1u);
}

// Level p.cur's term for every voxel of list p.cur, then the compaction into the other list
// for the next level (p.next_thr), and the per-map TFCE maximum of the voxels that drop out
// (results start at key_of(0), as the CPU folds from 0; voxels that never enter stay 0).
@compute @workgroup_size(64)
fn accumulate(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = voxel_of(thread_index(gid, nwg));
    var keep = false;
    if i != NONE {
        let b = i / p.v;
        let base = b * p.v;
        let r = atomicLoad(&parent[i]);
        let s = atomicLoad(&acc[3u * (base + r) + p.cur]);
        let term = sizepow[s] * p.hpow;
        let t = tfce[i] + term;
        tfce[i] = t;
        keep = maps[i] > p.next_thr;
        if keep {
            atomicStore(&parent[i], i - base);
            atomicStore(&acc[3u * i + 1u - p.cur], 0u);
        } else {
            atomicStore(&parent[i], NONE);
            // Most drop-outs are below the map's running maximum: skip their atomic.
            let k = key_of(t);
            if k > atomicLoad(&results[b * RES_STRIDE + RES_TFCE]) {
                atomicMax(&results[b * RES_STRIDE + RES_TFCE], k);
            }
        }
    }
    append(keep, i, 1u - p.cur, lid);
}

// Per-voxel exceedance counts tfce_jv >= observed_v over the maps of the batch; one thread
// per voxel, no atomics.
@compute @workgroup_size(64)
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
