//! The driving study as an engine workload: the interaction contrast of the simulated 2 mm
//! study (what `voxflip bench` and the engines' benchmark time).
use voxflip_stats::spatial::{MaskGraph, TfceParams};
use voxflip_stats::{ContrastModel, ContrastProblem, Design};

/// The driving study's interaction problem (tstat1) and its mask graph (for TFCE).
pub struct DrivingStudy {
    pub problem: ContrastProblem,
    pub graph: MaskGraph,
}

/// Simulate the 2 mm study (default seed) and build the interaction problem: N = 58
/// post - pre differences, two group means in the model, ~228,000 in-brain voxels.
pub fn driving_study() -> DrivingStudy {
    let sim = crate::simulate(&crate::SimConfig::default());
    let nvox = sim.dims[0] * sim.dims[1] * sim.dims[2];
    let voxels: Vec<usize> = (0..nvox).filter(|&l| sim.mask[l]).collect();
    let n = sim.ids.len();
    let v = voxels.len();
    let mut y = vec![0f32; n * v];
    for i in 0..n {
        for (k, &l) in voxels.iter().enumerate() {
            y[i * v + k] = sim.post[i * nvox + l] - sim.pre[i * nvox + l];
        }
    }
    let first = sim.groups[0].clone();
    let groups: Vec<usize> = sim.groups.iter().map(|g| (g != &first) as usize).collect();
    let other = sim.groups.iter().find(|g| **g != first).cloned().unwrap_or_default();
    let design = Design::group_by_time(&groups, &[first, other]);
    let model = ContrastModel::new(&design.m, &design.contrasts[0]).expect("the interaction is estimable");
    let graph = MaskGraph::from_mask(sim.dims, &sim.mask, TfceParams::default().conn);
    DrivingStudy { problem: model.problem(&y, v), graph }
}
