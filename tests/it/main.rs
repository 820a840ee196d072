//! voxflip's integration tests, one binary (one link) with shared helpers in `common`:
//! - oracles: `glm_oracles` (closed forms, brute-force enumeration, explicit refits),
//!   `spatial_calibration` (FWE rates of cluster and TFCE inference under the null),
//!   `voxelwise` (--vxl against per-voxel refits and brute force);
//! - the command line: `cli` (errors and runs), `backends` (the GPU pipeline equals the CPU
//!   pipeline), `fallback` (a GPU lost mid-run changes nothing), `shards` (shards merged
//!   and killed runs resumed give the single run's files), `slurm` (the job scripts, and a
//!   real SLURM when one answers: CI starts one), `report` (the HTML report, in a real
//!   browser when one is installed: CI installs Chromium);
//! - the shaders against their CPU ports on a real adapter: `gpu_twins`, `gpu_voxelwise`, `gpu_spatial_twins`,
//!   `gpu_tfce_exact_twins`;
//! - files users and machines make: `io_edges` (FSL names, FSLOUTPUTTYPE, garbled headers,
//!   refusals) and `kill_safety` (SIGKILL/SIGINT/SIGTERM never leave a mixed set).
//!
//! GPU tests run on any adapter, software ones (lavapipe) included. Without one they skip,
//! saying so on the terminal (not in the captured output), unless VOXFLIP_REQUIRE_GPU=1,
//! which CI sets.
mod common;

mod backends;
mod cli;
mod fallback;
mod glm_oracles;
mod gpu_spatial_twins;
mod gpu_table_twins;
mod gpu_tfce_exact_twins;
mod gpu_twins;
mod gpu_voxelwise;
mod io_edges;
mod kill_safety;
mod multi_adapter;
mod permutation_options;
mod randomise_outputs;
mod rank_deficient;
mod report;
mod shards;
mod shared_contrasts;
mod slurm;
mod spatial_calibration;
mod tfce_edge;
mod variance_smoothing;
mod voxelwise;
