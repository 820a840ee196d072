//! `shader/label_components.wgsl` and `shader/tfce.wgsl` (one module: tfce.wgsl imports
//! label_components.wgsl, whose bindings and passes it uses): the uniform parameters and
//! constants (declared here once and generated into the shaders) and the assembled source.
//! The CPU ports are [`crate::cpu::label_components`] and [`crate::cpu::tfce`]. Also the
//! exact TFCE module (`shader/tfce_exact.wgsl`, its own bindings; CPU port
//! [`crate::cpu::tfce_exact`]).
use crate::wgsl::{assemble, consts_wgsl, shader_consts, shader_struct, WgslStruct};

shader_consts! {
    /// Constants the spatial kernels and their host share.
    SPATIAL_CONSTS {
        /// Invocations per workgroup of every spatial kernel.
        WG = 64;
        /// Parent of a voxel that is not in any component (below threshold).
        NONE = u32::MAX;
        /// First entry of the neighbour row of a voxel TFCE leaves out (the grid's border,
        /// as randomise): it never enters a level.
        EXCLUDED_ROW = u32::MAX;
        /// `mode`: the cluster rule, x >= thr (NaN never).
        MODE_INCLUSIVE = 0;
        /// `mode`: a TFCE level, x > thr and x finite.
        MODE_TFCE = 1;
        /// `flags`: accumulate fixed-point masses too.
        FLAG_MASS = 1;
        /// `flags`: the first TFCE level of a batch (zeroes the TFCE maps and parents).
        FLAG_FIRST = 2;
        /// `flags`: there is a level above whose terms `compress_measure` adds.
        FLAG_PREV = 8;
        /// `sel`: a pass over the whole batch.
        NO_LIST = u32::MAX;
        /// `sel`: `hook` over the voxels entering at a TFCE level.
        LIST_NEW = 1;
        /// u32 slots of `results` per map: [extent, mass key] of the extent pass (slot 0), the
        /// same of the mass pass (slot 2), the TFCE maximum key, the map's mass fixed point.
        RES_STRIDE = 8;
        /// Slot of the TFCE maximum key in a map's results.
        RES_TFCE = 4;
        /// Slots of the map's mass fixed point as f32 bits (scale, lo_scale, hi_scale),
        /// written by the host.
        RES_SCALE = 5;
        /// u32 counters before the TFCE active list in the list buffer.
        LIST_HEAD = 8;
        /// List counter: active voxels.
        L_COUNT = 0;
        /// List counter: where the next level's entries start.
        L_NEXT = 1;
        /// List counter: where this level's entries start.
        L_NEW = 2;
        /// List counters: 64-bit count of voxel-levels processed (low word, then high).
        L_WORK = 4;
    }
}

shader_struct! {
    /// Uniform parameters of one spatial dispatch (`SpatialParams` in the shaders, generated).
    pub struct SpatialParams {
        pub v: u32,
        pub width: u32,
        pub nmaps: u32,
        /// [`MODE_INCLUSIVE`] or [`MODE_TFCE`].
        pub mode: u32,
        pub thr: f32,
        /// TFCE: h_k^H of the level.
        pub hpow: f32,
        pub slot: u32,
        /// [`FLAG_MASS`], [`FLAG_FIRST`], [`FLAG_PREV`].
        pub flags: u32,
        /// TFCE: parity of the level in processing order (the acc slot of its sizes).
        pub cur: u32,
        /// max_compute_workgroups_per_dimension (indirect arguments).
        pub maxd: u32,
        /// TFCE: the threshold of the level above, +inf for the top level.
        pub next_thr: f32,
        /// Voxels `hook` runs over: [`NO_LIST`] (whole batch) or [`LIST_NEW`].
        pub sel: u32,
        /// TFCE: h^H of the level above.
        pub next_hpow: f32,
        pub pad0: u32,
        pub pad1: u32,
        pub pad2: u32,
    }
}
const _: () = assert!(std::mem::size_of::<SpatialParams>() == 64);

shader_consts! {
    /// Constants of `shader/tfce_exact.wgsl` and its host.
    TFCE_EXACT_CONSTS {
        /// Bits per radix-sort digit of the per-map sort.
        EXACT_DIGIT_BITS = 11;
        /// Counters per map of the radix sort's histogram (2^EXACT_DIGIT_BITS).
        EXACT_HIST_BINS = 1 << 11;
        /// u32 slots of `results` per map: the TFCE maximum (f32 bits), the positive voxels,
        /// the state machine's phase, cursor and scan sum (tfce_exact.wgsl's S_*).
        EXACT_RES_STRIDE = 8;
        /// `results` slot of a map's phase, and the phase when it is done.
        EXACT_S_PHASE = 2;
        EXACT_PH_DONE = 16;
        /// Loop iterations per map and dispatch the host asks for (llvmpipe ends an
        /// invocation's loops after 65,535 iterations in all).
        EXACT_BUDGET = 1 << 12;
        /// The most neighbours a voxel has (26-connectivity): components one voxel can join.
        EXACT_MAX_NEIGHBOURS = 26;
    }
}
const _: () = assert!(EXACT_HIST_BINS == 1 << EXACT_DIGIT_BITS && 3 * EXACT_DIGIT_BITS >= 31);

shader_struct! {
    /// Uniform parameters of the exact TFCE passes (`TfceExactParams` in the shader).
    pub struct TfceExactParams {
        pub v: u32,
        pub width: u32,
        pub nmaps: u32,
        /// H + 1 when it is a small positive integer (the height weight by repeated
        /// multiplication), else 0 (pow).
        pub int_power: u32,
        pub h_plus_1: f32,
        /// Loop iterations each map may spend per dispatch ([`EXACT_BUDGET`]).
        pub budget: u32,
        pub pad1: u32,
        pub pad2: u32,
    }
}
const _: () = assert!(std::mem::size_of::<TfceExactParams>() == 32);

/// The largest H + 1 the exact TFCE raises heights to by repeated multiplication.
pub const EXACT_MAX_INT_POWER: u32 = 8;

impl TfceExactParams {
    /// The parameters for TFCE height exponent `h` over `nmaps` maps of a graph's `v`
    /// voxels and neighbour-row `width`.
    pub fn new(v: usize, width: usize, nmaps: usize, h: f32) -> TfceExactParams {
        let hp1 = h + 1.0;
        let int_power =
            if hp1.fract() == 0.0 && hp1 >= 1.0 && hp1 <= EXACT_MAX_INT_POWER as f32 { hp1 as u32 } else { 0 };
        TfceExactParams {
            v: v as u32,
            width: width as u32,
            nmaps: nmaps as u32,
            int_power,
            h_plus_1: hp1,
            budget: EXACT_BUDGET,
            ..Default::default()
        }
    }
}

/// The assembled WGSL source of the exact TFCE kernels (`shader/tfce_exact.wgsl`).
pub fn tfce_exact_wgsl_source() -> String {
    assemble(include_str!("../shader/tfce_exact.wgsl"), &|name| match name {
        "tfce_exact_params" => Some(format!(
            "{}{}{}",
            TfceExactParams::WGSL,
            consts_wgsl(TFCE_EXACT_CONSTS),
            consts_wgsl(&[("WG", WG), ("NONE", NONE), ("EXCLUDED_ROW", EXCLUDED_ROW)])
        )),
        _ => None,
    })
}

// The kernels read the stats crate's marker of an excluded row.
const _: () = assert!(EXCLUDED_ROW == voxflip_stats::spatial::EXCLUDED_ROW);

/// Workgroup memory of the exact TFCE module: none.
pub const EXACT_WORKGROUP_STORAGE_BYTES: u32 = 0;

/// The assembled WGSL source of the spatial kernels (labels, clusters and TFCE).
pub fn wgsl_source() -> String {
    assemble(include_str!("../shader/tfce.wgsl"), &|name| match name {
        "spatial_params" => Some(format!("{}{}", SpatialParams::WGSL, consts_wgsl(SPATIAL_CONSTS))),
        "label_components" => Some(include_str!("../shader/label_components.wgsl").to_string()),
        _ => None,
    })
}

/// The neighbour table of a mask graph as the kernels (and their CPU ports) read it: `width`
/// entries per voxel, in-mask neighbours ascending, then the padding value V.
pub fn neighbour_table(g: &voxflip_stats::spatial::MaskGraph) -> (Vec<u32>, usize) {
    let (rows, width) = g.padded_rows();
    (rows.to_vec(), width)
}

/// Workgroup memory of the spatial module: `append`'s count and base (tfce.wgsl).
pub const WORKGROUP_STORAGE_BYTES: u32 = 8;
