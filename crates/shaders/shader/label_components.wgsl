// Connected components of a batch of thresholded maps over the mask graph, and cluster
// extent / mass. Host side: the engines crate's gpu/spatial.rs; CPU port:
// src/cpu/label_components.rs. tfce.wgsl imports this file (it uses the declarations
// below), so both share one bind group layout. The parameters and constants are generated
// from src/spatial.rs.
//
// Layout: the batch holds `nmaps` maps of `v` in-mask voxels, map-major; thread i handles
// voxel i % v of map i / v. Parents are map-local voxel indices; NONE marks a voxel that is
// below threshold. `nbrs` holds `width` entries per voxel: in-mask neighbours ascending,
// then the padding value v.
//
// Labelling is lock-free union-find (Playne & Hawick 2018): a root is only ever hooked
// under a smaller index with atomicMin, and a hook that lost a race continues with the
// parent it displaced, so after `hook` every component has exactly one root, its smallest
// voxel index, whatever the scheduling: the labels are deterministic.
//
// Passes, each its own dispatch: init -> hook -> compress -> measure -> cluster_max over all
// voxels of the batch. The TFCE levels (tfce.wgsl) run `hook` over the voxels that enter at
// the level only (`Params.sel` = LIST_NEW), keeping the forest of the higher levels.

#import spatial_params
#import keys

@group(0) @binding(0) var<uniform> p: SpatialParams;
@group(0) @binding(1) var<storage, read> nbrs: array<u32>;
@group(0) @binding(2) var<storage, read> maps: array<f32>;
@group(0) @binding(3) var<storage, read_write> parent: array<atomic<u32>>;
// Per voxel [size, mass lo, mass hi], meaningful at roots; the TFCE levels (tfce.wgsl) use
// [size of even levels, size of odd levels (both at roots), the voxel's root].
@group(0) @binding(4) var<storage, read_write> acc: array<atomic<u32>>;
@group(0) @binding(5) var<storage, read_write> tfce: array<f32>;
@group(0) @binding(6) var<storage, read> sizepow: array<f32>;
@group(0) @binding(7) var<storage, read_write> results: array<atomic<u32>>;
@group(0) @binding(8) var<storage, read> observed: array<f32>;
@group(0) @binding(9) var<storage, read_write> counts: array<u32>;
// Active list of the TFCE levels: LIST_HEAD counters (tfce.wgsl), then the batch indices of
// the voxels above the current level, in the order they entered.
@group(0) @binding(10) var<storage, read_write> list: array<atomic<u32>>;
// Indirect dispatch arguments (x, y, z) of the list passes; bound (to a dummy otherwise) only
// in `set_args`, which writes them: a buffer cannot be both in one dispatch.
@group(0) @binding(11) var<storage, read_write> args: array<u32>;
// The list's counters: list[L_COUNT] active voxels; list[L_NEXT] where the next level's
// entries start; list[L_NEW] where this level's entries start; list[L_WORK], list[L_WORK + 1]
// the 64-bit count of voxel-levels processed.

// The batch index thread t handles: thread t of a whole-batch pass (NO_LIST), or the t-th
// voxel that entered at this level (LIST_NEW); NONE past the end.
fn voxel_of(t: u32) -> u32 {
    if p.sel == NO_LIST {
        return select(NONE, t, t < p.v * p.nmaps);
    }
    let s = atomicLoad(&list[L_NEW]);
    if t >= atomicLoad(&list[L_COUNT]) - s {
        return NONE;
    }
    return atomicLoad(&list[LIST_HEAD + s + t]);
}

// Entry t of the whole active list, or NONE.
fn active_voxel(t: u32) -> u32 {
    if t >= atomicLoad(&list[L_COUNT]) {
        return NONE;
    }
    return atomicLoad(&list[LIST_HEAD + t]);
}

fn thread_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

// Bit tests rather than x != x: they survive any fast-math assumption of the compiler.
fn is_nan(x: f32) -> bool {
    let b = bitcast<u32>(x);
    return (b & 0x7f800000u) == 0x7f800000u && (b & 0x007fffffu) != 0u;
}

fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

fn enters(x: f32) -> bool {
    if p.mode == MODE_TFCE {
        return is_finite(x) && x > p.thr;
    }
    return !is_nan(x) && x >= p.thr;
}

fn find(base: u32, x0: u32) -> u32 {
    var x = x0;
    loop {
        let q = atomicLoad(&parent[base + x]);
        if q == x {
            break;
        }
        x = q;
    }
    return x;
}

fn unite(base: u32, a0: u32, b0: u32) {
    var a = a0;
    var b = b0;
    loop {
        a = find(base, a);
        b = find(base, b);
        if a == b {
            break;
        }
        if a < b {
            let old = atomicMin(&parent[base + b], a);
            if old == b {
                break;
            }
            b = old;
        } else {
            let old = atomicMin(&parent[base + a], b);
            if old == a {
                break;
            }
            a = old;
        }
    }
}

@compute @workgroup_size(WG)
fn init(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = thread_index(gid, nwg);
    if i >= p.v * p.nmaps {
        return;
    }
    let v = i % p.v;
    atomicStore(&parent[i], select(NONE, v, enters(maps[i])));
    atomicStore(&acc[3u * i], 0u);
    atomicStore(&acc[3u * i + 1u], 0u);
    atomicStore(&acc[3u * i + 2u], 0u);
}

@compute @workgroup_size(WG)
fn hook(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = voxel_of(thread_index(gid, nwg));
    if i == NONE {
        return;
    }
    if atomicLoad(&parent[i]) == NONE {
        return;
    }
    let b = i / p.v;
    let v = i - b * p.v;
    let base = b * p.v;
    let row = v * p.width;
    // Each edge once, from its larger end: rows are ascending and padded with v_total > v.
    // A voxel entering at a TFCE level also joins its larger neighbours that are above the
    // level before (p.next_thr): their edges were not seen (the padding v_total stops).
    let entering = p.sel == LIST_NEW;
    for (var j = 0u; j < p.width; j++) {
        let u = nbrs[row + j];
        if u >= v {
            if !entering || u >= p.v {
                break;
            }
            if !(maps[base + u] > p.next_thr) {
                continue;
            }
        }
        if atomicLoad(&parent[base + u]) != NONE {
            unite(base, v, u);
        }
    }
}

@compute @workgroup_size(WG)
fn compress(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = thread_index(gid, nwg);
    if i >= p.v * p.nmaps {
        return;
    }
    if atomicLoad(&parent[i]) == NONE {
        return;
    }
    let b = i / p.v;
    let v = i - b * p.v;
    atomicStore(&parent[i], find(b * p.v, v));
}

// Component sizes (and, with FLAG_MASS, fixed-point masses) accumulated on the roots.
@compute @workgroup_size(WG)
fn measure(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = thread_index(gid, nwg);
    if i >= p.v * p.nmaps {
        return;
    }
    let r = atomicLoad(&parent[i]);
    if r == NONE {
        return;
    }
    let root = (i / p.v) * p.v + r;
    atomicAdd(&acc[3u * root], 1u);
    if (p.flags & FLAG_MASS) != 0u {
        // Fixed point of the mass: each voxel adds round(x * scale) as a 64-bit integer.
        // |x * scale| <= 2^30 for finite x (the host picks the map's scale); +-inf clamp.
        let scale = bitcast<f32>(atomicLoad(&results[(i / p.v) * RES_STRIDE + RES_SCALE]));
        let x = clamp(maps[i] * scale, -2147483520.0, 2147483520.0);
        let q = i32(round(x));
        let lo = bitcast<u32>(q);
        let hi = select(0u, 0xffffffffu, q < 0);
        let old = atomicAdd(&acc[3u * root + 1u], lo);
        let carry = select(0u, 1u, old + lo < old);
        atomicAdd(&acc[3u * root + 2u], hi + carry);
    }
}

// A root's 64-bit sum (hi, lo) back in f32 with the map's scales.
fn mass_of(b: u32, lo: u32, hi: u32) -> f32 {
    let lo_scale = bitcast<f32>(atomicLoad(&results[b * RES_STRIDE + RES_SCALE + 1u]));
    let hi_scale = bitcast<f32>(atomicLoad(&results[b * RES_STRIDE + RES_SCALE + 2u]));
    return f32(bitcast<i32>(hi)) * hi_scale + f32(lo) * lo_scale;
}

// Per-map maximum extent (and mass) over the roots into results[map * RES_STRIDE + slot].
@compute @workgroup_size(WG)
fn cluster_max(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = thread_index(gid, nwg);
    if i >= p.v * p.nmaps {
        return;
    }
    let b = i / p.v;
    let v = i - b * p.v;
    if atomicLoad(&parent[i]) != v {
        return;
    }
    atomicMax(&results[b * RES_STRIDE + p.slot], atomicLoad(&acc[3u * i]));
    if (p.flags & FLAG_MASS) != 0u {
        let m = mass_of(b, atomicLoad(&acc[3u * i + 1u]), atomicLoad(&acc[3u * i + 2u]));
        atomicMax(&results[b * RES_STRIDE + p.slot + 1u], key_of(m));
    }
}
