//! Thread CPU time of the CPU engine's two products on a 2 mm-sized random problem (one
//! thread): `cargo run --release -p voxflip-engines --example product_paths`.
// An example program reports on stdout; the library crates it uses do not print.
#![allow(clippy::print_stdout)]
use rand::{Rng, SeedableRng};
use voxflip_engines::cpu::CpuEngine;
use voxflip_engines::Product;
use voxflip_stats::{ContrastProblem, PermKind, PermSet, StatKind};

fn cpu_seconds() -> f64 {
    let mut ts = libc_timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid pointer to a timespec.
    unsafe { clock_gettime(3, &mut ts) }; // CLOCK_THREAD_CPUTIME_ID
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
#[repr(C)]
struct libc_timespec {
    tv_sec: i64,
    tv_nsec: i64,
}
extern "C" {
    fn clock_gettime(clk: i32, ts: *mut libc_timespec) -> i32;
}

fn main() {
    let (n, v, q) = (58usize, 64 * 1024usize, 2usize);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let e: Vec<f32> = (0..n * v).map(|_| rng.random::<f32>() - 0.5).collect();
    let qbasis: Vec<f32> = (0..n * q).map(|_| rng.random::<f32>() - 0.5).collect();
    let ss: Vec<f32> = (0..v).map(|x| (0..n).map(|i| e[i * v + x] * e[i * v + x]).sum::<f32>() * 2.0).collect();
    let p =
        ContrastProblem { n, v, q, s: 1, kind: StatKind::T, dof: (n - q) as f32, qbasis, e, ss, voxel_qbasis: None };
    let perms = PermSet::generate(n, PermKind::SignFlip, &vec![0; n], 2400, 1).unwrap();
    let obs = vec![1.0f32; v];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| {
        let mut best = [f64::MAX; 2];
        let mut engines: Vec<CpuEngine> = [Product::Gemm, Product::Table]
            .into_iter()
            .map(|product| {
                let mut eng = CpuEngine::new();
                eng.set_product(product);
                eng.prepare(&p).unwrap();
                eng.run_batch(&perms, 0..perms.len(), Some(&obs), None).unwrap();
                eng
            })
            .collect();
        for _ in 0..6 {
            for (i, eng) in engines.iter_mut().enumerate() {
                let t = cpu_seconds();
                eng.run_batch(&perms, 0..perms.len(), Some(&obs), None).unwrap();
                best[i] = best[i].min(cpu_seconds() - t);
            }
        }
        let per = |s: f64| s * 1e9 / (perms.len() as f64 * v as f64);
        println!(
            "matrix {:.2} ns, table {:.2} ns per perm per voxel (best of 6, thread CPU time); ratio {:.2}",
            per(best[0]),
            per(best[1]),
            best[0] / best[1]
        );
    });
}
