//! voxflip's WGSL compute shaders, in vello's manner: the sources under `shader/`, the
//! `#[repr(C)]` types and constants they share with the host declared once in Rust and
//! generated into the WGSL (`#import` lines, [`wgsl`]), and a CPU port of every shader
//! under [`cpu`], of the same name, with the same buffers, that the GPU tests hold the
//! shaders against.
//!
//! | shader | what it computes | host types | CPU port |
//! |---|---|---|---|
//! | `glm_stat.wgsl` | the permutation GLM product, statistic and reductions (Direct, Tiles) | [`glm_stat`] | [`cpu::glm_stat`] |
//! | `glm_stat_wide.wgsl` | the same with wide register blocks (Wide, Wide128) | [`glm_stat`] | [`cpu::glm_stat_wide`] |
//! | `glm_stat_table.wgsl` | the same for sign flips by the table-driven product | [`glm_stat_table`] | [`cpu::glm_stat_table`] |
//! | `glm_stat_voxelwise.wgsl` | the same with a basis per voxel (voxelwise regressors, `--vxl`) | [`glm_stat_voxelwise`] | [`cpu::glm_stat_voxelwise`] |
//! | `label_components.wgsl` | connected components, cluster extent and mass | [`spatial`] | [`cpu::label_components`] |
//! | `tfce.wgsl` | randomise's stepwise TFCE over the components | [`spatial`] | [`cpu::tfce`] |
//! | `tfce_exact.wgsl` | the exact TFCE integral, one component tree per map | [`spatial`] | [`cpu::tfce_exact`] |
//! | `shared/statistic.wgsl` | the t / F formula ([`voxflip_stats::statistic_of_sums`]) | | |
//! | `shared/keys.wgsl` | order-preserving float keys | [`keys`] | |
//! | `shared/glm_bindings.wgsl` | the bindings every glm_stat shader shares | [`glm_stat`] | |
//!
//! Every variant (kernel x pipeline constants) is parsed and validated with naga by this
//! crate's tests, so a broken shader fails `cargo test` on a machine without any GPU.
pub mod cpu;
pub mod glm_stat;
pub mod glm_stat_table;
pub mod glm_stat_voxelwise;
pub mod keys;
pub mod spatial;
pub mod wgsl;

#[cfg(test)]
mod validate;

pub use glm_stat::{GlmKernel, GlmParams};
pub use spatial::SpatialParams;

/// One compiled form of a shader: its assembled source and the values of its
/// pipeline-overridable constants.
#[derive(Clone, Debug)]
pub struct ShaderVariant {
    /// For messages, e.g. "glm_stat wide128 HAS_SRC=1".
    pub label: String,
    pub source: String,
    pub overrides: Vec<(&'static str, f64)>,
    /// The workgroup memory the host plans for this variant, in bytes (checked against the
    /// module's own declarations, since wgpu does not check it against the adapter's limit).
    pub workgroup_bytes: u32,
}

/// Every variant the engines build pipelines from.
pub fn variants() -> Vec<ShaderVariant> {
    let mut out = Vec::new();
    for kernel in GlmKernel::ALL {
        for has_src in [false, true] {
            out.push(ShaderVariant {
                label: format!("glm_stat {} HAS_SRC={}", kernel.name(), has_src as u8),
                source: kernel.wgsl_source(),
                overrides: kernel.overrides(has_src),
                workgroup_bytes: kernel.workgroup_storage_bytes(),
            });
        }
    }
    for bits in [1, glm_stat_table::best_bits(58), glm_stat_table::MAX_BITS] {
        out.push(ShaderVariant {
            label: format!("glm_stat_table BITS={bits}"),
            source: glm_stat_table::wgsl_source(),
            overrides: glm_stat_table::overrides(bits),
            workgroup_bytes: glm_stat_table::WORKGROUP_STORAGE_BYTES,
        });
    }
    for has_src in [false, true] {
        out.push(ShaderVariant {
            label: format!("glm_stat_voxelwise HAS_SRC={}", has_src as u8),
            source: glm_stat_voxelwise::wgsl_source(),
            overrides: glm_stat_voxelwise::overrides(has_src),
            workgroup_bytes: glm_stat_voxelwise::WORKGROUP_STORAGE_BYTES,
        });
    }
    out.push(ShaderVariant {
        label: "label_components + tfce".into(),
        source: spatial::wgsl_source(),
        overrides: Vec::new(),
        workgroup_bytes: spatial::WORKGROUP_STORAGE_BYTES,
    });
    out.push(ShaderVariant {
        label: "tfce_exact".into(),
        source: spatial::tfce_exact_wgsl_source(),
        overrides: Vec::new(),
        workgroup_bytes: spatial::EXACT_WORKGROUP_STORAGE_BYTES,
    });
    out
}
