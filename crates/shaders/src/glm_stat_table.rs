//! `shader/glm_stat_table.wgsl`, the table-driven product for sign flips (DESIGN.md, "Sign
//! flips without multiplications"): its tiling constants (generated into the shader), the
//! block size `bits` (the `BITS` pipeline constant), its workgroup memory and its assembled
//! source. Parameters and bindings are glm_stat's ([`GlmParams`], `shared/glm_bindings.wgsl`).
//! The CPU port is [`crate::cpu::glm_stat_table`].
use crate::glm_stat::{GlmParams, GLM_CONSTS};
use crate::wgsl::{assemble, consts_wgsl, WgslStruct};

/// Invocations along voxels per workgroup (one vec4 of voxels each).
pub const WG_V: u32 = 16;
/// Invocations along permutations per workgroup.
pub const WG_P: u32 = 16;
/// Permutations per invocation (acc0..acc7 in the shader).
pub const RP: u32 = 8;
/// Voxels per workgroup tile.
pub const TV: u32 = 4 * WG_V;
/// Permutations per workgroup tile.
pub const TP: u32 = WG_P * RP;
/// Invocations per workgroup.
pub const WG_SIZE: u32 = WG_V * WG_P;
/// Table rows (of TV voxels) in workgroup memory: one block of the largest `bits`, or
/// several blocks of smaller ones per stage.
pub const TABLE_ROWS: u32 = 64;
/// Rows of w = Q[:, k] * E staged per stage.
pub const W_ROWS: u32 = 32;
/// Blocks per stage at most (the codes of a stage: STAGE_BLOCKS x TP words).
pub const STAGE_BLOCKS: u32 = 8;
/// The largest block: half a table of 2^(MAX_BITS - 1) rows fills TABLE_ROWS.
pub const MAX_BITS: u32 = 7;
const _: () = assert!(1 << (MAX_BITS - 1) == TABLE_ROWS && MAX_BITS <= W_ROWS);
// The shader spells the 8 permutations of an invocation out; every invocation fills whole
// rows of the staged arrays.
const _: () = assert!(RP == 8 && TP <= WG_SIZE && TV <= WG_SIZE);
const _: () = assert!((W_ROWS * WG_V).is_multiple_of(WG_SIZE) && (TABLE_ROWS * WG_V).is_multiple_of(WG_SIZE));
const _: () = assert!((STAGE_BLOCKS * TP / 4).is_multiple_of(WG_SIZE));

/// Workgroup memory the shader declares: the tables (16 KiB), the staged w rows (8 KiB), the
/// codes (4 KiB), the per-permutation maxima and per-voxel counts: 29,440 bytes, within
/// lavapipe's 32 KiB and NVIDIA's 48 KiB (the host checks the adapter's limit; wgpu does not).
pub const WORKGROUP_STORAGE_BYTES: u32 = (TABLE_ROWS * TV + W_ROWS * TV + STAGE_BLOCKS * TP + TP + TV) * 4;

/// Blocks per stage for `bits` rows per block (the shader's `bps`).
pub fn blocks_per_stage(bits: u32) -> u32 {
    let h = 1 << (bits - 1);
    (TABLE_ROWS / h).min(W_ROWS / bits).min(STAGE_BLOCKS)
}

/// The block size the engine uses for `n` rows: the one with the fewest operations per tile
/// and k, counting per stage the w rows and codes staged, the table entries built (`bits - 1`
/// additions each) and the lookups (one per block and permutation), all per invocation.
/// Depends on n alone, so every batch of a run sums the same terms in the same order; never
/// more than n (a block of padding rows only costs).
pub fn best_bits(n: u32) -> u32 {
    (1..=MAX_BITS.min(n.max(1)))
        .min_by_key(|&b| {
            let bps = blocks_per_stage(b);
            let stages = n.div_ceil(bps * b).max(1);
            let per_stage = (W_ROWS * WG_V + STAGE_BLOCKS * TP + TABLE_ROWS * WG_V * (b - 1)) / WG_SIZE + bps * RP;
            // Three barriers a stage, each worth a few lookups.
            stages * (per_stage + 3 * RP)
        })
        .expect("MAX_BITS >= 1")
}

/// The assembled WGSL source (imports resolved, tiling constants generated).
pub fn wgsl_source() -> String {
    assemble(include_str!("../shader/glm_stat_table.wgsl"), &|name| match name {
        "glm_params" => Some(format!("{}{}", GlmParams::WGSL, consts_wgsl(GLM_CONSTS))),
        "glm_stat_table_tiling" => Some(tiling_wgsl()),
        _ => None,
    })
}

/// The pipeline-overridable constants for blocks of `bits` rows.
pub fn overrides(bits: u32) -> Vec<(&'static str, f64)> {
    assert!((1..=MAX_BITS).contains(&bits), "bits = {bits} outside 1..={MAX_BITS}");
    vec![("BITS", bits as f64)]
}

/// Number of workgroups for a dispatch of `params`: (voxel tiles, permutation tiles).
pub fn workgroups(params: &GlmParams) -> (u32, u32) {
    (params.vc.div_ceil(TV), params.n_perm.div_ceil(TP))
}

/// The generated `glm_stat_table_tiling` module.
fn tiling_wgsl() -> String {
    format!(
        "const WG_V: u32 = {WG_V}u;\nconst WG_P: u32 = {WG_P}u;\nconst TV: u32 = {TV}u;\nconst TV4: u32 = {WG_V}u;\n\
         const TP: u32 = {TP}u;\nconst TP4: u32 = {tp4}u;\nconst WG_SIZE: u32 = {WG_SIZE}u;\nconst TABLE_ROWS: u32 = {TABLE_ROWS}u;\n\
         const W_ROWS: u32 = {W_ROWS}u;\nconst STAGE_BLOCKS: u32 = {STAGE_BLOCKS}u;\n\
         const W_LOADS: u32 = {wl}u;\nconst CODE_LOADS: u32 = {cl}u;\nconst T_LOADS: u32 = {tl}u;\n",
        tp4 = TP / 4,
        wl = W_ROWS * WG_V / WG_SIZE,
        cl = STAGE_BLOCKS * TP / 4 / WG_SIZE,
        tl = TABLE_ROWS * WG_V / WG_SIZE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_fit_their_arrays() {
        assert_eq!(WORKGROUP_STORAGE_BYTES, 29_440);
        for bits in 1..=MAX_BITS {
            let bps = blocks_per_stage(bits);
            assert!(bps >= 1 && bps * (1 << (bits - 1)) <= TABLE_ROWS && bps * bits <= W_ROWS);
            assert!(bps <= STAGE_BLOCKS);
        }
        assert_eq!(blocks_per_stage(MAX_BITS), 1);
        assert_eq!(blocks_per_stage(1), STAGE_BLOCKS);
        // The model's choice for the driving study and for large N.
        assert_eq!(best_bits(58), 4);
        assert!((3..=5).contains(&best_bits(5000)));
        assert_eq!(best_bits(1), 1);
    }
}
