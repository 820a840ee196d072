// Stepwise TFCE (randomise's discretization) of a batch of maps. Appended to
// label_components.wgsl, whose bindings and passes it uses. Host side:
// src/engine/gpu/spatial.rs; CPU twin: src/engine/gpu/cpu/tfce.rs.
//
// Per level k (h_k and h_k^H from the host, h_k accumulated in f32 as FSL does): the host
// runs init (MODE_TFCE, thr = h_k) -> hook -> compress -> measure, then `accumulate` adds
// size^E * h_k^H to every voxel of a component, in f32: `tfce += sizepow[size] * hpow`.
// After the last level, `tfce_max` and `tfce_counts`.

@compute @workgroup_size(64)
fn accumulate(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = thread_index(gid, nwg);
    if i >= p.v * p.nmaps {
        return;
    }
    let r = atomicLoad(&parent[i]);
    if r == NONE {
        return;
    }
    let s = atomicLoad(&acc[3u * ((i / p.v) * p.v + r)]);
    let term = sizepow[s] * p.hpow;
    tfce[i] = tfce[i] + term;
}

// Per-map maximum TFCE (results initialised to key_of(0), as the CPU folds from 0).
@compute @workgroup_size(64)
fn tfce_max(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = thread_index(gid, nwg);
    if i >= p.v * p.nmaps {
        return;
    }
    atomicMax(&results[(i / p.v) * RES_STRIDE + RES_TFCE], key_of(tfce[i]));
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
