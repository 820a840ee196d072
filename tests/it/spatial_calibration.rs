//! Null calibration of the spatial statistics: on pure-noise data, family-wise rejections
//! at 0.05 for TFCE and for cluster extent stay within the binomial 95% interval. Each
//! dataset is smooth noise on a 14^3 grid (N = 12, sign flips, 100 permutations); it
//! "rejects" when its observed maximum has FWE p <= 0.05.
use nalgebra::DMatrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use voxflip_engines::cpu::CpuEngine;
use voxflip_engines::scheduler::{observed_map, permute_contrast};
use voxflip_engines::Engine;
use voxflip_stats::spatial::{
    observed_cluster_values, Connectivity, MaskGraph, SpatialJob, TfceOptions, TfceParams, Workspace,
};
use voxflip_stats::{Contrast, ContrastModel, MaxStatNull, PermKind, PermSet, StatKind};

const D: usize = 14;

/// Symmetric noise smoothed by a 3x3x3 box (so clusters form), one image per row.
fn smooth_noise(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    let nv = D * D * D;
    let mut y = vec![0f32; n * nv];
    for i in 0..n {
        let raw: Vec<f32> = (0..nv).map(|_| rng.random::<f32>() - 0.5).collect();
        for z in 0..D {
            for yy in 0..D {
                for x in 0..D {
                    let mut s = 0.0;
                    for dz in -1i32..=1 {
                        for dy in -1i32..=1 {
                            for dx in -1i32..=1 {
                                let (a, b, c) = (x as i32 + dx, yy as i32 + dy, z as i32 + dz);
                                if (0..D as i32).contains(&a)
                                    && (0..D as i32).contains(&b)
                                    && (0..D as i32).contains(&c)
                                {
                                    s += raw[a as usize + D * (b as usize + D * c as usize)];
                                }
                            }
                        }
                    }
                    y[i * nv + x + D * (yy + D * z)] = s;
                }
            }
        }
    }
    y
}

#[test]
fn tfce_and_cluster_extent_fwe_rates_are_calibrated() {
    let (n, nperm, datasets) = (12usize, 100usize, 300usize);
    let nv = D * D * D;
    let voxels: Vec<u32> = (0..nv as u32).collect();
    let g6 = MaskGraph::new([D, D, D], voxels.clone(), Connectivity::C6);
    let g26 = MaskGraph::new([D, D, D], voxels, Connectivity::C26);
    let ones = DMatrix::from_element(n, 1, 1.0);
    let contrast = Contrast { name: "t".into(), kind: StatKind::T, c: DMatrix::from_element(1, 1, 1.0) };
    let model = ContrastModel::new(&ones, &contrast).unwrap();
    let tfce = TfceOptions { params: TfceParams::default(), exact: false, step: None };
    let (mut rej_tfce, mut rej_ext) = (0, 0);
    for d in 0..datasets {
        let mut rng = ChaCha8Rng::seed_from_u64(1000 + d as u64);
        let y = smooth_noise(&mut rng, n);
        let problem = model.problem(&y, nv);
        let perms = PermSet::generate(n, PermKind::SignFlip, &vec![0; n], nperm, d as u64).unwrap();
        let mut engine = Engine::Cpu(CpuEngine::new());
        engine.prepare(&problem).unwrap();
        let observed = observed_map(&mut engine, &problem, perms.kind).unwrap();
        let dh = observed.iter().copied().fold(0f32, f32::max) / 100.0;
        // Cluster-forming threshold t = 2.2 (about p = 0.025 at 11 dof).
        let thr = 2.2;
        let job = SpatialJob {
            tfce: Some((&g6, tfce, dh)),
            tfce_observed: None,
            cluster_graph: Some(&g26),
            extent_thr: Some(thr),
            mass_thr: None,
        };
        let snull = permute_contrast(&mut engine, &problem, &perms, 0..perms.len(), &observed, Some(&job), None, &())
            .unwrap()
            .spatial;
        let mut tf = vec![0f32; nv];
        job.tfce_map(&observed, &mut Workspace::new(), &mut tf).unwrap();
        let tmax = tf.iter().copied().fold(0f32, f32::max);
        if MaxStatNull::new(snull.tfce_max.clone()).corrected_p(tmax) <= 0.05 {
            rej_tfce += 1;
        }
        let ext = observed_cluster_values(&g26, &observed, thr, false);
        let emax = ext.iter().copied().filter(|x| !x.is_nan()).fold(0f32, f32::max);
        if emax > 0.0 && MaxStatNull::new(snull.extent_max.clone()).corrected_p(emax) <= 0.05 {
            rej_ext += 1;
        }
    }
    eprintln!("TFCE {rej_tfce}/{datasets}, cluster extent {rej_ext}/{datasets} rejections at FWE 0.05");
    // Binomial(300, 0.05): mean 15; P(X <= 7) = 1.6%, P(X >= 24) = 1.7%, so [8, 23] is
    // the central 95% interval (rounded outwards to whole counts). With P = 100 permutations, p <= 0.05 happens with probability exactly 0.05
    // under exchangeability (5 of 100 ranks).
    assert!((8..=23).contains(&rej_tfce), "TFCE: {rej_tfce} of {datasets}");
    assert!((8..=23).contains(&rej_ext), "cluster extent: {rej_ext} of {datasets}");
}
