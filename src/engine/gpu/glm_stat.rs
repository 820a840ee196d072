//! Host side of `shaders/glm_stat.wgsl`: the uniform parameters, the tiling constants and the
//! assembled shader source. The CPU twin is [`super::cpu::glm_stat`].

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

/// `flags` bits.
pub const FLAG_SRC: u32 = 1;
pub const FLAG_OBSERVED: u32 = 2;
pub const FLAG_MAPS: u32 = 4;

/// Uniform parameters of one dispatch; mirrors `struct Params` in the WGSL field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GlmParams {
    pub n: u32,
    pub q: u32,
    pub s: u32,
    /// 0 = t, 1 = F.
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
    pub flags: u32,
    /// Batch permutation index held in row 0 of the maps buffer.
    pub maps_base: u32,
    pub dof: f32,
    pub pad: [u32; 4],
}
const _: () = assert!(std::mem::size_of::<GlmParams>() == 64);

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

    /// Parse the names `VOXFLIP_GLM_KERNEL` accepts: direct, tiles (or old), wide, wide128
    /// (or new).
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

    /// The WGSL source with its tiling constants prepended.
    pub fn wgsl_source(self) -> String {
        match self {
            GlmKernel::Direct | GlmKernel::Tiles => wgsl_source(),
            GlmKernel::Wide => wide::wgsl_source(wide::WG_P),
            GlmKernel::Wide128 => wide::wgsl_source(wide::WG_P_128),
        }
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

    /// The shader source with the tiling constants for `wg_p` prepended.
    pub fn wgsl_source(wg_p: u32) -> String {
        let (tp, wg_size) = (wg_p * RP, WG_V * wg_p);
        let header = format!(
            "const WG_V: u32 = {WG_V}u;\nconst WG_P: u32 = {wg_p}u;\nconst RV: u32 = {RV}u;\nconst RP: u32 = {RP}u;\n\
             const KT: u32 = {KT}u;\nconst TP: u32 = {tp}u;\nconst TV: u32 = {TV}u;\nconst TP4: u32 = {tp4}u;\n\
             const TV4: u32 = {tv4}u;\nconst WG_SIZE: u32 = {wg_size}u;\n\
             const A_LOADS: u32 = {al}u;\nconst E_LOADS: u32 = {el}u;\n",
            tp4 = tp / 4,
            tv4 = TV / 4,
            al = KT * tp / 4 / wg_size,
            el = E_WORDS / wg_size,
        );
        header + include_str!("../../../shaders/glm_stat_wide.wgsl")
    }
}

/// Number of workgroups for a dispatch of `params` by `kernel`: (voxel tiles, permutation
/// tiles).
pub fn workgroups(params: &GlmParams, kernel: GlmKernel) -> (u32, u32) {
    (params.vc.div_ceil(kernel.tile_voxels()), params.n_perm.div_ceil(kernel.tile_perms()))
}

/// The shader source with the tiling constants prepended.
pub fn wgsl_source() -> String {
    let header = format!(
        "const WG_V: u32 = {WG_V}u;\nconst WG_P: u32 = {WG_P}u;\nconst RV: u32 = {RV}u;\nconst RP: u32 = {RP}u;\n\
         const KT: u32 = {KT}u;\nconst TP: u32 = {TP}u;\nconst TV: u32 = {TV}u;\nconst WG_SIZE: u32 = {WG_SIZE}u;\n\
         const A_TILE: u32 = {A_TILE}u;\nconst E_TILE: u32 = {E_TILE}u;\n\
         const A_LOADS: u32 = {al}u;\nconst E_LOADS: u32 = {el}u;\n",
        al = A_TILE / WG_SIZE,
        el = E_TILE / WG_SIZE,
    );
    header + include_str!("../../../shaders/glm_stat.wgsl")
}

/// Order-preserving f32 -> u32 key, as in the shader.
#[inline]
pub fn key_of(t: f32) -> u32 {
    let b = t.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// Inverse of [`key_of`]. Key 0 (no voxel seen) decodes to -inf.
#[inline]
pub fn value_of(key: u32) -> f32 {
    if key == 0 {
        f32::NEG_INFINITY
    } else if key & 0x8000_0000 != 0 {
        f32::from_bits(key & 0x7fff_ffff)
    } else {
        f32::from_bits(!key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_preserve_order() {
        let xs = [f32::NEG_INFINITY, -1e30, -2.5, -1e-30, -0.0, 0.0, 1e-30, 3.0, 1e30, f32::INFINITY];
        for w in xs.windows(2) {
            assert!(key_of(w[0]) <= key_of(w[1]), "{} {}", w[0], w[1]);
        }
        for &x in &xs[1..] {
            assert_eq!(value_of(key_of(x)).to_bits(), x.to_bits());
        }
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
