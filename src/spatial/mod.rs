//! Spatial statistics on statistic maps: connected components, cluster extent and mass,
//! TFCE, and the cluster table.
//!
//! All functions take maps indexed by in-mask voxel (length V, the order of
//! [`MaskGraph::voxels`]) and are single-threaded: the pipeline parallelises over
//! permutations, one [`Workspace`] per worker, reused across calls.

pub mod graph;
pub mod labels;
pub mod table;
pub mod tfce;
pub mod workspace;

#[cfg(test)]
mod oracle_tests;

pub use graph::{Connectivity, MaskGraph};
pub use labels::{above_cluster_threshold, cluster_sizes_masses, label_components};
pub use table::{cluster_table, local_maxima_table};
pub use tfce::{
    tfce_exact, tfce_exact_into, tfce_exact_max, tfce_stepwise, tfce_stepwise_into, tfce_stepwise_max,
    tfce_step_from_observed, TfceParams,
};
pub use workspace::Workspace;
