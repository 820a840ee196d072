//! `shader/glm_stat_voxelwise.wgsl`, glm_stat for voxelwise regressors (randomise `--vxl`):
//! every voxel has its own basis Q_v, so the coefficient of permutation p at row m is
//! sign_p(m) Q_v[src_p(m)][k] and differs from voxel to voxel; nothing of the product is
//! shared across voxels. Its tiling constants (generated into the shader), its workgroup
//! memory, its assembled source and its pipeline constants. Parameters and bindings are
//! glm_stat's ([`GlmParams`], `shared/glm_bindings.wgsl`), with one difference: the `qbasis`
//! binding holds the chunk's bases, (n x q) x vc row-major (`qbasis[(m * q + k) * vc + v]`,
//! voxels fastest like the E chunk, so that neighbouring invocations read neighbouring
//! words). The CPU port is [`crate::cpu::glm_stat_voxelwise`].
use crate::glm_stat::{GlmParams, GLM_CONSTS};
use crate::wgsl::{assemble, consts_wgsl, WgslStruct};

/// Invocations per workgroup, all along voxels.
pub const WG_SIZE: u32 = 64;
/// Voxels per invocation (one vec4 of accumulators per permutation).
pub const RV: u32 = 4;
/// Permutations per workgroup: every invocation of a workgroup runs the same RP, so their
/// sign words and row sources are uniform loads.
pub const RP: u32 = 4;
/// Voxels per workgroup.
pub const TV: u32 = RV * WG_SIZE;
/// Permutations per workgroup.
pub const TP: u32 = RP;
/// Rows per unrolled block of the row loop (divides 32: sign words are reloaded at block
/// starts).
pub const UNROLL: u32 = 8;
// The shader spells the 4 x 4 block out in vec4s.
const _: () = assert!(RV == 4 && RP == 4 && 32 % UNROLL == 0 && TP <= WG_SIZE);

/// Workgroup memory the kernel declares: the per-permutation maxima only (the bases differ per
/// voxel, so no slice of them is shared by a workgroup). Far inside WebGPU's 16 KiB minimum.
pub const WORKGROUP_STORAGE_BYTES: u32 = TP * 4;

/// The assembled WGSL source (imports resolved, tiling constants generated).
pub fn wgsl_source() -> String {
    assemble(include_str!("../shader/glm_stat_voxelwise.wgsl"), &|name| match name {
        "glm_params" => Some(format!("{}{}", GlmParams::WGSL, consts_wgsl(GLM_CONSTS))),
        "glm_stat_voxelwise_tiling" => Some(format!(
            "const WG_SIZE: u32 = {WG_SIZE}u;\nconst RV: u32 = {RV}u;\nconst RP: u32 = {RP}u;\n\
             const TV: u32 = {TV}u;\nconst TP: u32 = {TP}u;\nconst UNROLL: u32 = {UNROLL}u;\n"
        )),
        _ => None,
    })
}

/// The pipeline-overridable constants for permutations that do (`has_src`) or do not exchange
/// rows.
pub fn overrides(has_src: bool) -> Vec<(&'static str, f64)> {
    vec![("HAS_SRC", if has_src { 1.0 } else { 0.0 })]
}

/// Number of workgroups for a dispatch of `params`: (voxel tiles, permutation tiles).
pub fn workgroups(params: &GlmParams) -> (u32, u32) {
    (params.vc.div_ceil(TV), params.n_perm.div_ceil(TP))
}

/// Floats of the chunk's bases for `vc` voxels of an n x q basis each.
pub fn bases_len(n: usize, q: usize, vc: usize) -> usize {
    n * q * vc
}

/// The bases of voxels `v0..v0 + vc` in the shader's layout, (n x q) x vc with voxels fastest,
/// from `voxel_qbasis` in the problem's layout (v blocks of n x q row-major,
/// `voxel_qbasis[(vox * n + m) * q + k]`).
pub fn chunk_bases(voxel_qbasis: &[f32], n: usize, q: usize, v0: usize, vc: usize) -> Vec<f32> {
    let mut out = vec![0f32; bases_len(n, q, vc)];
    for x in 0..vc {
        let block = &voxel_qbasis[(v0 + x) * n * q..(v0 + x + 1) * n * q];
        for (mk, &val) in block.iter().enumerate() {
            out[mk * vc + x] = val;
        }
    }
    out
}
