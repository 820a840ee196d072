// The bindings of the glm_stat shaders (glm_stat.wgsl, glm_stat_wide.wgsl, glm_stat_table.wgsl,
// glm_stat_voxelwise.wgsl): one layout, so the host builds one bind group for any of them.
#import glm_params

@group(0) @binding(0) var<uniform> P: GlmParams;
// [sign words: perms x wpp | row sources: perms x n] for the whole batch.
@group(0) @binding(1) var<storage, read> perm_words: array<u32>;
// Q: n x q, row-major (glm_stat_voxelwise: the chunk's bases, (n x q) x vc, voxels fastest).
@group(0) @binding(2) var<storage, read> qbasis: array<f32>;
// E restricted to the chunk: n x vc, row-major.
@group(0) @binding(3) var<storage, read> e_chunk: array<f32>;
// [ss: vc | observed: vc] for the chunk.
@group(0) @binding(4) var<storage, read> vox: array<f32>;
// One order-preserving key per permutation of the batch.
@group(0) @binding(5) var<storage, read_write> max_bits: array<atomic<u32>>;
// One exceedance count per voxel of the chunk.
@group(0) @binding(6) var<storage, read_write> counts: array<atomic<u32>>;
// Statistic maps, (perm - maps_base) x vc; a 1-element dummy when not written.
@group(0) @binding(7) var<storage, read_write> maps: array<f32>;
