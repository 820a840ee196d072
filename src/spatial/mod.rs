//! Spatial statistics on statistic maps: connected components, cluster extent and mass,
//! TFCE, and the cluster table.
