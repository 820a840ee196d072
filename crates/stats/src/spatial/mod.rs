//! Spatial statistics on statistic maps: connected components, cluster extent and mass,
//! TFCE, and the cluster table.
//!
//! All functions take maps indexed by in-mask voxel (length V, the order of
//! [`MaskGraph::voxels`]) and are single-threaded: the pipeline parallelises over
//! permutations, one [`Workspace`] per worker, reused across calls.
//!
//! Conventions, chosen to match FSL randomise:
//! - cluster-forming threshold is inclusive, `T >= thr` (FSL `binarise`); cluster mass is
//!   the sum of T over the cluster (randomise `-C`), extent the voxel count (`-c`);
//! - stepwise TFCE reproduces FSL's `tfce()` (newimagefns.h), which randomise calls:
//!   levels 0, dh, 2dh, ... accumulated in f32, strict `T > h`, the sum not multiplied by
//!   dh, dh = observed max / 100 ([`tfce_step_from_observed`]);
//! - only positive finite values are enhanced by TFCE.

// Voxel loops index several parallel arrays by voxel; iterator chains would hide that.
#![allow(clippy::needless_range_loop)]

pub mod graph;
pub mod labels;
pub mod levels;
pub mod null;
pub mod table;
pub mod tfce;
pub mod tfce_reference;
pub mod workspace;

#[cfg(test)]
mod equivalence_tests;
#[cfg(test)]
mod oracle_tests;

pub use graph::{Connectivity, MaskGraph, EXCLUDED_ROW};
pub use labels::{above_cluster_threshold, cluster_sizes_masses, label_components};
pub use levels::{tfce_levels, TooManyLevels, MAX_TFCE_LEVELS};
pub use null::{observed_cluster_values, SpatialJob, SpatialNull, SpatialOptions, TfceEdge, TfceOptions};
pub use table::{cluster_table, local_maxima_table};
pub use tfce::{
    tfce_exact, tfce_exact_into, tfce_exact_max, tfce_step_from_observed, tfce_stepwise, tfce_stepwise_into,
    tfce_stepwise_max, TfceParams,
};
pub use tfce_reference::{
    tfce_exact_reference, tfce_exact_reference_into, tfce_exact_reference_max, tfce_stepwise_reference,
    tfce_stepwise_reference_into, tfce_stepwise_reference_max,
};
pub use workspace::{pow_fast, Workspace};
