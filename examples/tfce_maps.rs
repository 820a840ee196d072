//! TFCE per map on realistic null maps: the simulated 2 mm driving study's sign-flipped t
//! maps (CPU engine), timed with the reference engine and the fast one, one map at a time
//! on one thread, and through `SpatialJob::reduce` (the null's parallel loop) on 1 and 2
//! threads. Optionally exports maps for benches/tfce_python.
//!
//! cargo run --release --example tfce_maps -- [MAPS] [--export DIR]
//!
//! With --export, DIR gets maps.f32 (MAPS dense 91x109x91 grids, x fastest, 0 outside
//! the mask, little-endian f32), mask.u8, voxflip_exact.f32 (voxflip's exact TFCE of each
//! map, H = 2, E = 0.5, 6-connectivity, same layout) and dims.txt.

use std::time::Instant;
use voxflip_engines::cpu::CpuEngine;
use voxflip_stats::spatial::{
    tfce_exact_into, tfce_exact_reference_into, tfce_step_from_observed, tfce_stepwise_into,
    tfce_stepwise_reference_into, SpatialJob, SpatialNull, TfceOptions, TfceParams, Workspace,
};
use voxflip_stats::{PermKind, PermSet};

/// Nanoseconds this thread has run on a CPU (Linux schedstat; 0 elsewhere): on a machine
/// shared with other work, the time it was descheduled is not the algorithm's cost.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let nmaps: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(40);
    let export = args.iter().position(|a| a == "--export").map(|i| args[i + 1].clone());

    let study = voxflip_simulate::driving_study();
    let (p, g) = (&study.problem, &study.graph);
    let v = p.v;
    let mut engine = CpuEngine::new();
    engine.prepare(p).expect("prepare");
    // Map 0 is the observed map (identity); the others are sign flips, as in the null.
    let perms = PermSet::generate(p.n, PermKind::SignFlip, &vec![0; p.n], nmaps, 1).expect("perms");
    let mut maps = vec![0f32; nmaps * v];
    engine.run_batch(&perms, 0..nmaps, None, Some(&mut maps)).expect("maps");
    let observed = &maps[..v];
    let dh = tfce_step_from_observed(observed);
    let params = TfceParams::default();
    let positive = maps.iter().filter(|&&x| x > 0.0).count() as f64 / nmaps as f64;
    println!("{nmaps} maps, V = {v}, {positive:.0} positive voxels per map on average, dh = {dh}");

    let mut ws = Workspace::new();
    let mut out = vec![0f32; v];
    type TfceFn<'a> = Box<dyn Fn(&[f32], &mut Workspace, &mut [f32]) + 'a>;
    let variants: [(&str, TfceFn); 4] = [
        ("stepwise, reference", Box::new(|m, ws, o| tfce_stepwise_reference_into(g, m, &params, dh, ws, o).unwrap())),
        ("stepwise, fast", Box::new(|m, ws, o| tfce_stepwise_into(g, m, &params, dh, ws, o).unwrap())),
        ("exact, reference", Box::new(|m, ws, o| tfce_exact_reference_into(g, m, &params, ws, o))),
        ("exact, fast", Box::new(|m, ws, o| tfce_exact_into(g, m, &params, ws, o))),
    ];
    // Interleaved per map so all variants see the same machine load; min and mean per map.
    let mut stats = vec![(f64::INFINITY, 0.0f64, 0.0f64); variants.len()];
    for _round in 0..2 {
        for m in maps.chunks(v) {
            for (k, (_, f)) in variants.iter().enumerate() {
                let (t, c) = (Instant::now(), thread_cpu_ns());
                f(m, &mut ws, &mut out);
                let ms = t.elapsed().as_secs_f64() * 1e3;
                let cpu_ms = (thread_cpu_ns() - c) as f64 / 1e6;
                stats[k].0 = stats[k].0.min(ms);
                stats[k].1 += ms / (2 * nmaps) as f64;
                stats[k].2 += cpu_ms / (2 * nmaps) as f64;
            }
        }
    }
    for ((name, _), (min, mean, cpu)) in variants.iter().zip(&stats) {
        println!("one thread, {name}: min {min:.2} ms, mean {mean:.2} ms per map (mean on-CPU time {cpu:.2} ms)");
    }

    // The null's loop (TFCE map, its maximum and the exceedance counts per map).
    let opts = TfceOptions { params, exact: false, step: None };
    let mut tfce_obs = vec![0f32; v];
    tfce_stepwise_into(g, observed, &params, dh, &mut ws, &mut tfce_obs).unwrap();
    for exact in [false, true] {
        let o = TfceOptions { exact, ..opts };
        let mut obs = tfce_obs.clone();
        if exact {
            tfce_exact_into(g, observed, &params, &mut ws, &mut obs);
        }
        let job = SpatialJob {
            tfce: Some((g, o, dh)),
            tfce_observed: Some(&obs),
            cluster_graph: None,
            extent_thr: None,
            mass_thr: None,
        };
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut best = f64::INFINITY;
            for _ in 0..3 {
                let mut null = SpatialNull::default();
                let t = Instant::now();
                pool.install(|| job.reduce(&maps, v, &mut null)).unwrap();
                best = best.min(t.elapsed().as_secs_f64() * 1e3);
            }
            let what = if exact { "exact" } else { "stepwise" };
            println!(
                "null ({what}, SpatialJob::reduce), {threads} thread(s): {:.2} ms per map ({:.2} ms per map per thread), best of 3",
                best / nmaps as f64,
                best * threads as f64 / nmaps as f64
            );
        }
    }

    if let Some(dir) = export {
        std::fs::create_dir_all(&dir).unwrap();
        let dims = g.dims;
        let grid: usize = dims.iter().product();
        let dense = |vals: &[f32]| -> Vec<u8> {
            let mut d = vec![0f32; grid];
            for (i, &lin) in g.voxels.iter().enumerate() {
                d[lin as usize] = vals[i];
            }
            d.iter().flat_map(|x| x.to_le_bytes()).collect()
        };
        let mut all = Vec::new();
        let mut exact = Vec::new();
        for m in maps.chunks(v) {
            all.extend(dense(m));
            tfce_exact_into(g, m, &params, &mut ws, &mut out);
            exact.extend(dense(&out));
        }
        let mut mask = vec![0u8; grid];
        for &lin in &g.voxels {
            mask[lin as usize] = 1;
        }
        std::fs::write(format!("{dir}/maps.f32"), all).unwrap();
        std::fs::write(format!("{dir}/voxflip_exact.f32"), exact).unwrap();
        std::fs::write(format!("{dir}/mask.u8"), mask).unwrap();
        std::fs::write(format!("{dir}/dims.txt"), format!("{} {} {} {nmaps}\n", dims[0], dims[1], dims[2])).unwrap();
        println!("exported {nmaps} maps to {dir}");
    }
}
