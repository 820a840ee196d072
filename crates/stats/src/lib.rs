//! voxflip's statistics, from a design to p-values (DESIGN.md): pure Rust, no GPU, no I/O,
//! no printing.
//!
//! - [`design`]: designs and contrasts, validated (VEST matrices, the one-sample test, the
//!   group-by-time interaction, `-D`);
//! - [`model`]: the partitioned GLM of one contrast (Beckmann partitioning, Freedman–Lane),
//!   and the [`problem`] it hands to an engine with the one statistic formula;
//! - [`confound`]: randomise's confound methods (-U) as choices of that problem;
//! - [`glm_maps`]: the unpermuted GLM's pe, cope, varcope and sigmasqr maps (--glm_output);
//! - [`voxelwise`]: voxelwise regressors (--vxl), each voxel's own partition;
//! - [`observed`]: the observed statistic map in f64, as randomise computes it;
//! - [`perm`]: seeded permutation sets, exhaustive or random, with exchangeability blocks;
//! - [`inference`]: max-statistic nulls and p-values;
//! - [`smoothing`]: randomise's variance smoothing (-v), the pseudo-t;
//! - [`spatial`]: mask graphs, cluster extent and mass, TFCE, cluster tables, and the
//!   spatial nulls of permutation maps.
pub mod confound;
pub mod design;
pub mod glm_maps;
pub mod inference;
pub mod model;
pub mod observed;
pub mod perm;
pub mod problem;
pub mod smoothing;
pub mod spatial;
pub mod voxelwise;

pub use confound::ConfoundMethod;
pub use design::{Contrast, Design, DesignError};
pub use glm_maps::{glm_maps, GlmMaps};
pub use inference::{add_counts, corrected_p, uncorrected_p, with_identity_floor, MaxStatNull, PScale};
pub use model::{
    column_basis, column_dependencies, estimability_residuals, identical_row_labels, pseudo_inverse, rank,
    ColumnDependency, ContrastModel, ESTIMABLE_TOL,
};
pub use observed::ObservedFit;
pub use perm::{Blocks, PermKind, PermSet};
pub use problem::{statistic, statistic_of_sums, ContrastProblem, StatKind};
pub use smoothing::VarianceSmoothing;
pub use voxelwise::{voxelwise_problem, VoxelwiseEvs, VoxelwiseProblem};
