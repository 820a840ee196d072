//! CPU ports of the WGSL stages: one module per shader, same name, same buffers in and out,
//! same arithmetic order where the language allows. They are the oracle the GPU stages are
//! tested against, written for clarity rather than speed.
pub mod glm_stat;
pub mod glm_stat_table;
pub mod glm_stat_voxelwise;
pub mod glm_stat_wide;
pub mod label_components;
pub mod tfce;
pub mod tfce_exact;
