//! `shader/glm_stat.wgsl` and `shader/glm_stat_wide.wgsl`: the uniform parameters and flag
//! bits (declared here once and generated into the shaders), the tiling constants, the four
//! kernels built from the two files, and their assembled sources. The CPU ports are
//! [`crate::cpu::glm_stat`] and [`crate::cpu::glm_stat_wide`].
use crate::wgsl::{assemble, consts_wgsl, shader_consts, shader_struct, WgslStruct};

/// Invocations along voxels per workgroup.
pub const WG_V: u32 = 16;
/// Invocations along permutations per workgroup.
pub const WG_P: u32 = 8;
/// Voxels per invocation (register block columns).
pub const RV: u32 = 4;
/// Permutations per invocation (register block rows).
pub const RP: u32 = 4;
/// Rows of N per workgroup-memory slice. 32 rather than 16: every slice costs two barriers,
/// which are expensive on CPU implementations (lavapipe) and not free anywhere.
pub const KT: u32 = 32;
/// Permutations per workgroup tile.
pub const TP: u32 = WG_P * RP;
/// Voxels per workgroup tile.
pub const TV: u32 = WG_V * RV;
/// Invocations per workgroup.
pub const WG_SIZE: u32 = WG_V * WG_P;

const A_TILE: u32 = KT * TP;
const E_TILE: u32 = KT * TV;
// The shader spells the 4 x 4 register block out in vec4s.
const _: () = assert!(RP == 4 && RV == 4);
const _: () = assert!(A_TILE.is_multiple_of(WG_SIZE) && E_TILE.is_multiple_of(WG_SIZE) && TP <= WG_SIZE);

/// Workgroup memory the kernel declares: the two slices and the per-permutation maxima.
pub const WORKGROUP_STORAGE_BYTES: u32 = (A_TILE + E_TILE + TP) * 4;

shader_consts! {
    /// The `flags` bits and `kind` values of [`GlmParams`], as the shaders see them.
    GLM_CONSTS {
        /// Row sources present (the permutations exchange rows).
        FLAG_SRC = 1;
        /// Observed values present: count exceedances.
        FLAG_OBSERVED = 2;
        /// Write the statistic maps.
        FLAG_MAPS = 4;
        /// `kind` of a t statistic.
        KIND_T = 0;
        /// `kind` of an F statistic.
        KIND_F = 1;
    }
}

shader_struct! {
    /// Uniform parameters of one glm_stat dispatch (`GlmParams` in the shaders, generated).
    pub struct GlmParams {
        pub n: u32,
        pub q: u32,
        pub s: u32,
        /// [`KIND_T`] or [`KIND_F`].
        pub kind: u32,
        /// Voxels in the chunk (row stride of the E chunk).
        pub vc: u32,
        /// Permutations in this dispatch.
        pub n_perm: u32,
        /// First permutation of the dispatch, as an index into the batch's perm words / max keys.
        pub perm_offset: u32,
        /// Sign words per permutation (0 = no sign flips).
        pub wpp: u32,
        /// Offset of the row sources in the perm-words buffer.
        pub src_base: u32,
        /// [`FLAG_SRC`] | [`FLAG_OBSERVED`] | [`FLAG_MAPS`].
        pub flags: u32,
        /// Batch permutation index held in row 0 of the maps buffer.
        pub maps_base: u32,
        /// Residual degrees of freedom.
        pub dof: f32,
        /// 1 / s, computed on the host as the CPU statistic computes it.
        pub inv_s: f32,
        pub pad0: u32,
        pub pad1: u32,
        pub pad2: u32,
    }
}
const _: () = assert!(std::mem::size_of::<GlmParams>() == 64);

impl GlmParams {
    /// `inv_s` for the contrast rank `s`: `1 / s` in f32, as [`voxflip_stats::statistic`].
    pub fn inv_s_of(s: u32) -> f32 {
        1.0 / s as f32
    }
}

/// The generated `glm_params` module: the struct and its constants.
fn glm_params_wgsl() -> String {
    format!("{}{}", GlmParams::WGSL, consts_wgsl(GLM_CONSTS))
}

/// Voxels per workgroup on the direct-load path (`SHARED_TILES = false`).
pub const TV_DIRECT: u32 = RV * WG_SIZE;
/// Permutations per workgroup on the direct-load path.
pub const TP_DIRECT: u32 = RP;

/// Which glm_stat kernel (shader and data path) runs. All three compute the same sums in the
/// same order; the CPU twin is the oracle for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GlmKernel {
    /// `glm_stat.wgsl` with `SHARED_TILES = false`: storage loads only (software adapters).
    Direct,
    /// `glm_stat.wgsl` with `SHARED_TILES = true`: 4 x 4 register blocks, 32 x 64 tiles (the
    /// first hardware path; kept selectable as the fallback of `Wide`).
    Tiles,
    /// `glm_stat_wide.wgsl`: 8 x 4 register blocks over vec4 workgroup words, 16 x 16
    /// invocations, 128 x 64 tiles.
    Wide,
    /// `glm_stat_wide.wgsl` with 16 x 8 invocations, 64 x 64 tiles: the same block in half the
    /// workgroup (more workgroups per multiprocessor where registers are the limit). The
    /// hardware default where the adapter's limits allow it.
    Wide128,
}

impl GlmKernel {
    pub const ALL: [GlmKernel; 4] = [GlmKernel::Direct, GlmKernel::Tiles, GlmKernel::Wide, GlmKernel::Wide128];

    /// Parse the names the `--glm-kernel` switch accepts: direct, tiles (or old), wide,
    /// wide128 (or new).
    pub fn parse(s: &str) -> Option<GlmKernel> {
        match s.trim().to_ascii_lowercase().as_str() {
            "direct" => Some(GlmKernel::Direct),
            "tiles" | "old" => Some(GlmKernel::Tiles),
            "wide" => Some(GlmKernel::Wide),
            "wide128" | "new" => Some(GlmKernel::Wide128),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GlmKernel::Direct => "direct",
            GlmKernel::Tiles => "tiles",
            GlmKernel::Wide => "wide",
            GlmKernel::Wide128 => "wide128",
        }
    }

    /// Permutations per workgroup tile.
    pub fn tile_perms(self) -> u32 {
        match self {
            GlmKernel::Direct => TP_DIRECT,
            GlmKernel::Tiles => TP,
            GlmKernel::Wide => wide::TP,
            GlmKernel::Wide128 => wide::TP_128,
        }
    }

    /// Voxels per workgroup tile.
    pub fn tile_voxels(self) -> u32 {
        match self {
            GlmKernel::Direct => TV_DIRECT,
            GlmKernel::Tiles => TV,
            GlmKernel::Wide | GlmKernel::Wide128 => wide::TV,
        }
    }

    /// Workgroup size (x = voxels, y = permutations).
    pub fn workgroup_size(self) -> (u32, u32) {
        match self {
            GlmKernel::Direct | GlmKernel::Tiles => (WG_V, WG_P),
            GlmKernel::Wide => (wide::WG_V, wide::WG_P),
            GlmKernel::Wide128 => (wide::WG_V, wide::WG_P_128),
        }
    }

    /// Workgroup memory the kernel declares, in bytes.
    pub fn workgroup_storage_bytes(self) -> u32 {
        match self {
            GlmKernel::Direct | GlmKernel::Tiles => WORKGROUP_STORAGE_BYTES,
            GlmKernel::Wide => wide::WORKGROUP_STORAGE_BYTES,
            GlmKernel::Wide128 => wide::workgroup_storage_bytes(wide::WG_P_128),
        }
    }

    /// The assembled WGSL source (imports resolved, tiling constants generated).
    pub fn wgsl_source(self) -> String {
        let (main, tiling) = match self {
            GlmKernel::Direct | GlmKernel::Tiles => (include_str!("../shader/glm_stat.wgsl"), tiling_wgsl()),
            GlmKernel::Wide => (include_str!("../shader/glm_stat_wide.wgsl"), wide::tiling_wgsl(wide::WG_P)),
            GlmKernel::Wide128 => (include_str!("../shader/glm_stat_wide.wgsl"), wide::tiling_wgsl(wide::WG_P_128)),
        };
        assemble(main, &|name| match name {
            "glm_params" => Some(glm_params_wgsl()),
            "glm_stat_tiling" => Some(tiling.clone()),
            _ => None,
        })
    }

    /// The values of the shader's pipeline-overridable constants for a pipeline whose
    /// permutations do (`has_src`) or do not exchange rows.
    pub fn overrides(self, has_src: bool) -> Vec<(&'static str, f64)> {
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let mut constants = vec![("HAS_SRC", flag(has_src))];
        if matches!(self, GlmKernel::Direct | GlmKernel::Tiles) {
            constants.push(("SHARED_TILES", flag(self == GlmKernel::Tiles)));
        }
        constants
    }
}

/// Tiling constants of `shaders/glm_stat_wide.wgsl` (the `Wide` and `Wide128` kernels; they
/// differ in WG_P only).
pub mod wide {
    /// Invocations along voxels per workgroup.
    pub const WG_V: u32 = 16;
    /// Invocations along permutations per workgroup (`Wide`).
    pub const WG_P: u32 = 16;
    /// Invocations along permutations per workgroup (`Wide128`).
    pub const WG_P_128: u32 = 8;
    /// Voxels per invocation (one vec4).
    pub const RV: u32 = 4;
    /// Permutations per invocation (two vec4 coefficient words).
    pub const RP: u32 = 8;
    /// Rows of N per workgroup-memory slice.
    pub const KT: u32 = 32;
    /// Permutations per workgroup tile (`Wide`).
    pub const TP: u32 = WG_P * RP;
    /// Permutations per workgroup tile (`Wide128`).
    pub const TP_128: u32 = WG_P_128 * RP;
    /// Voxels per workgroup tile.
    pub const TV: u32 = WG_V * RV;
    const E_WORDS: u32 = KT * TV / 4;
    // The shader spells out the 8 x 4 block (two coefficient words, one E word per k-step)
    // and unrolls the rows of a slice by 8; every invocation stores whole slice words.
    // KT = 32: a slice's rows share one sign word per permutation (loaded once per slice).
    const _: () = assert!(RP == 8 && RV == 4 && KT == 32);
    const fn shape_ok(wg_p: u32) -> bool {
        let wg_size = WG_V * wg_p;
        let a_words = KT * wg_p * RP / 4;
        let tp4 = wg_p * RP / 4;
        a_words.is_multiple_of(wg_size)
            && E_WORDS.is_multiple_of(wg_size)
            && wg_size.is_multiple_of(tp4)
            && wg_p * RP <= wg_size
            && TV <= wg_size
    }
    const _: () = assert!(shape_ok(WG_P) && shape_ok(WG_P_128));

    /// Workgroup memory for `wg_p` invocations along permutations: the two slices (vec4
    /// words), the per-permutation maxima and the per-voxel counts of the tile.
    pub const fn workgroup_storage_bytes(wg_p: u32) -> u32 {
        (KT * wg_p * RP + 4 * E_WORDS + wg_p * RP + TV) * 4
    }

    /// Workgroup memory of `Wide`: 25,344 bytes, within lavapipe's 32 KiB and the 48 KiB of
    /// NVIDIA GPUs, above WebGPU's 16 KiB minimum (the host checks the adapter's limit).
    /// `Wide128` needs 16,896.
    pub const WORKGROUP_STORAGE_BYTES: u32 = workgroup_storage_bytes(WG_P);

    /// The generated `glm_stat_tiling` module for `wg_p` invocations along permutations.
    pub(super) fn tiling_wgsl(wg_p: u32) -> String {
        let (tp, wg_size) = (wg_p * RP, WG_V * wg_p);
        format!(
            "const WG_V: u32 = {WG_V}u;\nconst WG_P: u32 = {wg_p}u;\nconst RV: u32 = {RV}u;\nconst RP: u32 = {RP}u;\n\
             const KT: u32 = {KT}u;\nconst TP: u32 = {tp}u;\nconst TV: u32 = {TV}u;\nconst TP4: u32 = {tp4}u;\n\
             const TV4: u32 = {tv4}u;\nconst WG_SIZE: u32 = {wg_size}u;\n\
             const A_LOADS: u32 = {al}u;\nconst E_LOADS: u32 = {el}u;\n",
            tp4 = tp / 4,
            tv4 = TV / 4,
            al = KT * tp / 4 / wg_size,
            el = E_WORDS / wg_size,
        )
    }
}

/// Number of workgroups for a dispatch of `params` by `kernel`: (voxel tiles, permutation
/// tiles).
pub fn workgroups(params: &GlmParams, kernel: GlmKernel) -> (u32, u32) {
    (params.vc.div_ceil(kernel.tile_voxels()), params.n_perm.div_ceil(kernel.tile_perms()))
}

/// The generated `glm_stat_tiling` module of `glm_stat.wgsl`.
fn tiling_wgsl() -> String {
    format!(
        "const WG_V: u32 = {WG_V}u;\nconst WG_P: u32 = {WG_P}u;\nconst RV: u32 = {RV}u;\nconst RP: u32 = {RP}u;\n\
         const KT: u32 = {KT}u;\nconst TP: u32 = {TP}u;\nconst TV: u32 = {TV}u;\nconst WG_SIZE: u32 = {WG_SIZE}u;\n\
         const A_TILE: u32 = {A_TILE}u;\nconst E_TILE: u32 = {E_TILE}u;\n\
         const A_LOADS: u32 = {al}u;\nconst E_LOADS: u32 = {el}u;\n",
        al = A_TILE / WG_SIZE,
        el = E_TILE / WG_SIZE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_kernel_fits_the_webgpu_minimum() {
        const { assert!(WORKGROUP_STORAGE_BYTES <= 16384, "fits the WebGPU minimum") };
    }

    #[test]
    fn kernels_fit_lavapipe_and_parse() {
        // lavapipe offers 32 KiB of workgroup memory: the twin tests run every kernel there.
        for k in GlmKernel::ALL {
            assert!(k.workgroup_storage_bytes() <= 32768, "{k:?}");
            assert_eq!(GlmKernel::parse(k.name()), Some(k));
            let (x, y) = k.workgroup_size();
            assert!(x * y <= 256);
        }
        assert_eq!(GlmKernel::Wide.workgroup_storage_bytes(), 25_344);
        assert_eq!(GlmKernel::Wide128.workgroup_storage_bytes(), 16_896);
        assert_eq!((GlmKernel::Wide.tile_perms(), GlmKernel::Wide128.tile_perms()), (128, 64));
        assert_eq!(GlmKernel::parse("old"), Some(GlmKernel::Tiles));
        assert_eq!(GlmKernel::parse("New"), Some(GlmKernel::Wide128));
        assert_eq!(GlmKernel::parse("fast"), None);
    }
}
