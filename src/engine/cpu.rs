//! The CPU engine: the reference and the fallback.
//!
//! Work is split into voxel tiles of [`TILE`] voxels, processed in parallel (rayon). For a
//! tile, the residuals are packed into a contiguous N x TILE block (L1-resident), then the
//! batch's coefficient rows A (B*q x N) are multiplied into it [`ROWS`] rows at a time by a
//! register-blocked microkernel (ROWS x TILE accumulators live in vector registers), into a
//! small buffer of [`PERM_BLOCK`] permutations. A separate, vectorizable epilogue pass turns
//! that buffer into statistics and keeps only the reductions (per-permutation maximum,
//! per-voxel exceedance counts) and, on request, the maps. Nothing of size
//! permutations x voxels is ever held, except the maps a caller explicitly asks for.
//!
//! The microkernel is compiled for AVX-512 and AVX2+FMA and picked at run time; elsewhere a
//! portable version (no FMA) runs.
use super::{BatchResult, ContrastProblem, Engine, StatKind};
use crate::error::Result;
use crate::perm::PermSet;
use rayon::prelude::*;
use std::ops::Range;

/// Voxels per tile (4 AVX-512 vectors).
pub const TILE: usize = 64;
/// Coefficient rows per microkernel call (ROWS x TILE accumulators = 24 zmm registers).
pub const ROWS: usize = 6;
/// Permutations per epilogue block: the U buffer is PERM_BLOCK*q x TILE floats (L1).
pub const PERM_BLOCK: usize = 24;

pub struct CpuEngine {
    problem: Option<ContrastProblem>,
    batch: usize,
}

impl Default for CpuEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuEngine {
    pub fn new() -> Self {
        CpuEngine { problem: None, batch: 240 }
    }
    /// Which microkernel this machine runs.
    pub fn isa() -> &'static str {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                return "avx512f";
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return "avx2+fma";
            }
        }
        "portable"
    }
}

/// A raw pointer that rayon tasks may share because each task writes a disjoint range.
#[derive(Clone, Copy)]
struct Disjoint<T>(*mut T);
unsafe impl<T> Send for Disjoint<T> {}
unsafe impl<T> Sync for Disjoint<T> {}

macro_rules! microkernel {
    ($name:ident, $fma:expr) => {
        /// out[r][w] = sum_i a[r*n + i] * e[i*TILE + w] for r < ROWS, w < TILE.
        #[inline(always)]
        fn $name(a: &[f32], e: &[f32], n: usize, out: &mut [f32]) {
            let mut acc = [[0f32; TILE]; ROWS];
            let a = &a[..ROWS * n];
            let e = &e[..n * TILE];
            for i in 0..n {
                let er: &[f32; TILE] = e[i * TILE..(i + 1) * TILE].try_into().unwrap();
                for r in 0..ROWS {
                    let av = a[r * n + i];
                    for w in 0..TILE {
                        acc[r][w] = $fma(av, er[w], acc[r][w]);
                    }
                }
            }
            for r in 0..ROWS {
                out[r * TILE..(r + 1) * TILE].copy_from_slice(&acc[r]);
            }
        }
    };
}

microkernel!(micro_fma, |a: f32, b: f32, c: f32| a.mul_add(b, c));
microkernel!(micro_plain, |a: f32, b: f32, c: f32| a * b + c);

/// The statistic for one permutation over a tile, from its q rows of U (each TILE long).
/// Same arithmetic, in the same order, as `engine::statistic`.
#[inline(always)]
fn epilogue_tile(kind: StatKind, u: &[f32], q: usize, s: usize, ss: &[f32; TILE], dof: f32, out: &mut [f32; TILE]) {
    let mut unorm = [0f32; TILE];
    let mut num = [0f32; TILE];
    for k in 0..q {
        let uk: &[f32; TILE] = u[k * TILE..(k + 1) * TILE].try_into().unwrap();
        for w in 0..TILE {
            unorm[w] += uk[w] * uk[w];
        }
        if k + 1 == s {
            num = unorm;
        }
    }
    let u0: &[f32; TILE] = u[..TILE].try_into().unwrap();
    let inv_s = 1.0 / s as f32;
    for w in 0..TILE {
        let rss = (ss[w] - unorm[w]).max(ss[w] * 1e-6);
        let inv_sigma2 = dof / rss;
        let stat = match kind {
            StatKind::T => u0[w] * inv_sigma2.sqrt(),
            StatKind::F => num[w] * inv_s * inv_sigma2,
        };
        out[w] = if ss[w] > 0.0 { stat } else { 0.0 };
    }
}

/// One tile, all permutations of the batch. Generic over the microkernel so each ISA gets
/// its own fully inlined copy.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile_body(
    micro: fn(&[f32], &[f32], usize, &mut [f32]),
    p: &ContrastProblem,
    a: &[f32],
    nperm: usize,
    v0: usize,
    observed: Option<&[f32]>,
    maps: Option<Disjoint<f32>>,
    counts: Option<Disjoint<u32>>,
    packed: &mut Vec<f32>,
    ubuf: &mut Vec<f32>,
    maxes: &mut [f32],
) {
    let (n, v, q) = (p.n, p.v, p.q);
    let w = TILE.min(v - v0);
    packed.clear();
    packed.resize(n * TILE, 0.0);
    for i in 0..n {
        packed[i * TILE..i * TILE + w].copy_from_slice(&p.e[i * v + v0..i * v + v0 + w]);
    }
    // Padding voxels get ss = 0 so their statistic is 0 and never counted.
    let mut ss = [0f32; TILE];
    ss[..w].copy_from_slice(&p.ss[v0..v0 + w]);
    let mut obs = [f32::INFINITY; TILE];
    if let Some(o) = observed {
        obs[..w].copy_from_slice(&o[v0..v0 + w]);
    }
    let mut cnt = [0u32; TILE];
    let rows_per_block = PERM_BLOCK * q;
    let padded_rows = rows_per_block.div_ceil(ROWS) * ROWS;
    ubuf.resize(padded_rows * TILE, 0.0);
    let total_rows = a.len() / n;
    let mut stat = [0f32; TILE];
    for pb in (0..nperm).step_by(PERM_BLOCK) {
        let np = PERM_BLOCK.min(nperm - pb);
        let r0 = pb * q;
        let nrows = np * q;
        for r in (0..nrows).step_by(ROWS) {
            // A is padded to a multiple of ROWS rows, so the kernel always has ROWS rows.
            debug_assert!(r0 + r + ROWS <= total_rows);
            micro(&a[(r0 + r) * n..], packed, n, &mut ubuf[r * TILE..(r + ROWS) * TILE]);
        }
        for j in 0..np {
            epilogue_tile(p.kind, &ubuf[j * q * TILE..(j + 1) * q * TILE], q, p.s, &ss, p.dof, &mut stat);
            let mut mx = f32::NEG_INFINITY;
            for x in 0..w {
                mx = mx.max(stat[x]);
            }
            let pj = pb + j;
            maxes[pj] = maxes[pj].max(mx);
            for x in 0..TILE {
                cnt[x] += (stat[x] >= obs[x]) as u32;
            }
            if let Some(m) = maps {
                // SAFETY: this task owns voxels v0..v0+w of every map in the batch.
                unsafe {
                    std::ptr::copy_nonoverlapping(stat.as_ptr(), m.0.add(pj * v + v0), w);
                }
            }
        }
    }
    if let Some(c) = counts {
        // SAFETY: this task owns voxels v0..v0+w of the counts.
        unsafe {
            for x in 0..w {
                *c.0.add(v0 + x) = cnt[x];
            }
        }
    }
}

/// The AVX-512 microkernel with explicit intrinsics: each residual vector is loaded once
/// per row i into a register and reused by the ROWS broadcasts (auto-vectorized code
/// re-loaded it for every FMA, making the loop load-port bound).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn micro_avx512(a: &[f32], e: &[f32], n: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    const _: () = assert!(ROWS == 6 && TILE == 64);
    assert!(a.len() >= ROWS * n && e.len() >= n * TILE && out.len() >= ROWS * TILE);
    // SAFETY: bounds asserted above; only called from tile_avx512, which requires avx512f.
    unsafe {
        let mut c = [[_mm512_setzero_ps(); 4]; ROWS];
        let ap = a.as_ptr();
        let ep = e.as_ptr();
        for i in 0..n {
            let e0 = _mm512_loadu_ps(ep.add(i * TILE));
            let e1 = _mm512_loadu_ps(ep.add(i * TILE + 16));
            let e2 = _mm512_loadu_ps(ep.add(i * TILE + 32));
            let e3 = _mm512_loadu_ps(ep.add(i * TILE + 48));
            for (r, cr) in c.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add(r * n + i));
                cr[0] = _mm512_fmadd_ps(av, e0, cr[0]);
                cr[1] = _mm512_fmadd_ps(av, e1, cr[1]);
                cr[2] = _mm512_fmadd_ps(av, e2, cr[2]);
                cr[3] = _mm512_fmadd_ps(av, e3, cr[3]);
            }
        }
        let op = out.as_mut_ptr();
        for (r, cr) in c.iter().enumerate() {
            for (k, v) in cr.iter().enumerate() {
                _mm512_storeu_ps(op.add(r * TILE + 16 * k), *v);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx512(
    p: &ContrastProblem, a: &[f32], nperm: usize, v0: usize, observed: Option<&[f32]>,
    maps: Option<Disjoint<f32>>, counts: Option<Disjoint<u32>>, packed: &mut Vec<f32>, ubuf: &mut Vec<f32>, maxes: &mut [f32],
) {
    tile_body(micro_avx512, p, a, nperm, v0, observed, maps, counts, packed, ubuf, maxes)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx2(
    p: &ContrastProblem, a: &[f32], nperm: usize, v0: usize, observed: Option<&[f32]>,
    maps: Option<Disjoint<f32>>, counts: Option<Disjoint<u32>>, packed: &mut Vec<f32>, ubuf: &mut Vec<f32>, maxes: &mut [f32],
) {
    microkernel!(micro_avx2, |a: f32, b: f32, c: f32| a.mul_add(b, c));
    tile_body(micro_avx2, p, a, nperm, v0, observed, maps, counts, packed, ubuf, maxes)
}

#[allow(clippy::too_many_arguments)]
fn tile_portable(
    p: &ContrastProblem, a: &[f32], nperm: usize, v0: usize, observed: Option<&[f32]>,
    maps: Option<Disjoint<f32>>, counts: Option<Disjoint<u32>>, packed: &mut Vec<f32>, ubuf: &mut Vec<f32>, maxes: &mut [f32],
) {
    let _ = micro_fma; // kept for machines with FMA but without the x86 paths
    tile_body(micro_plain, p, a, nperm, v0, observed, maps, counts, packed, ubuf, maxes)
}

impl Engine for CpuEngine {
    fn describe(&self) -> String {
        format!("cpu ({} threads, {})", rayon::current_num_threads(), Self::isa())
    }

    fn prepare(&mut self, problem: &ContrastProblem) -> Result<()> {
        self.problem = Some(problem.clone());
        Ok(())
    }

    fn preferred_batch(&self) -> usize {
        self.batch
    }

    fn run_batch(
        &mut self,
        perms: &PermSet,
        range: Range<usize>,
        observed: Option<&[f32]>,
        maps: Option<&mut [f32]>,
    ) -> Result<BatchResult> {
        let p = self.problem.as_ref().expect("CpuEngine::run_batch before prepare");
        let (n, v, q) = (p.n, p.v, p.q);
        let nperm = range.len();
        // Coefficient rows for the batch, padded with zero rows to a multiple of ROWS.
        let rows = (nperm * q).div_ceil(ROWS) * ROWS + ROWS;
        let mut a = vec![0f32; rows * n];
        for (jj, j) in range.clone().enumerate() {
            perms.coefficient_rows(j, &p.qbasis, q, &mut a[jj * q * n..(jj + 1) * q * n]);
        }
        let mut exceed = if observed.is_some() { vec![0u32; v] } else { Vec::new() };
        let counts = observed.map(|_| Disjoint(exceed.as_mut_ptr()));
        let maps_ptr = maps.map(|m| {
            assert_eq!(m.len(), nperm * v);
            Disjoint(m.as_mut_ptr())
        });
        let ntiles = v.div_ceil(TILE);
        let isa = Self::isa();
        let max_stat = (0..ntiles)
            .into_par_iter()
            .fold(
                || (vec![f32::NEG_INFINITY; nperm], Vec::new(), Vec::new()),
                |(mut maxes, mut packed, mut ubuf), t| {
                    let v0 = t * TILE;
                    match isa {
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: the feature was detected at run time.
                        "avx512f" => unsafe { tile_avx512(p, &a, nperm, v0, observed, maps_ptr, counts, &mut packed, &mut ubuf, &mut maxes) },
                        #[cfg(target_arch = "x86_64")]
                        "avx2+fma" => unsafe { tile_avx2(p, &a, nperm, v0, observed, maps_ptr, counts, &mut packed, &mut ubuf, &mut maxes) },
                        _ => tile_portable(p, &a, nperm, v0, observed, maps_ptr, counts, &mut packed, &mut ubuf, &mut maxes),
                    }
                    (maxes, packed, ubuf)
                },
            )
            .map(|(m, _, _)| m)
            .reduce(|| vec![f32::NEG_INFINITY; nperm], |mut x, y| {
                for (a, b) in x.iter_mut().zip(y) {
                    *a = a.max(b);
                }
                x
            });
        Ok(BatchResult { max_stat, exceed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::statistic;
    use crate::perm::{PermKind, PermSet};
    use rand::{Rng, SeedableRng};

    fn random_problem(n: usize, v: usize, q: usize, s: usize, kind: StatKind, seed: u64) -> ContrastProblem {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let e: Vec<f32> = (0..n * v).map(|_| rng.random::<f32>() - 0.5).collect();
        let qbasis: Vec<f32> = (0..n * q).map(|_| rng.random::<f32>() - 0.5).collect();
        let ss: Vec<f32> = (0..v).map(|x| (0..n).map(|i| e[i * v + x] * e[i * v + x]).sum::<f32>() * 2.0).collect();
        ContrastProblem { n, v, q, s, kind, dof: (n - q) as f32, qbasis, e, ss }
    }

    /// The engine equals a naive loop (coefficient rows, dot products, `statistic`), for odd
    /// sizes that exercise partial tiles, partial row blocks and partial perm blocks.
    #[test]
    fn engine_matches_naive_loop() {
        for &(n, v, q, s, kind, pk) in &[
            (7usize, 1usize, 1usize, 1usize, StatKind::T, PermKind::SignFlip),
            (13, 130, 2, 1, StatKind::T, PermKind::Permute),
            (29, 65, 4, 3, StatKind::F, PermKind::Both),
            (58, 200, 2, 1, StatKind::T, PermKind::SignFlip),
        ] {
            let p = random_problem(n, v, q, s, kind, n as u64);
            let labels: Vec<u32> = (0..n as u32).collect();
            let perms = PermSet::generate(n, pk, &labels, 53, 5).unwrap();
            let mut eng = CpuEngine::new();
            eng.prepare(&p).unwrap();
            let observed: Vec<f32> = (0..v).map(|x| (x % 7) as f32 * 0.3 - 0.6).collect();
            let mut maps = vec![0f32; perms.len() * v];
            let res = eng.run_batch(&perms, 0..perms.len(), Some(&observed), Some(&mut maps)).unwrap();
            let mut a = vec![0f32; q * n];
            let mut u = vec![0f32; q];
            let mut counts = vec![0u32; v];
            for j in 0..perms.len() {
                perms.coefficient_rows(j, &p.qbasis, q, &mut a);
                let mut mx = f32::NEG_INFINITY;
                for x in 0..v {
                    for k in 0..q {
                        // f64 accumulation: the oracle is more exact than the engine.
                        u[k] = (0..n).map(|i| a[k * n + i] as f64 * p.e[i * v + x] as f64).sum::<f64>() as f32;
                    }
                    let t = statistic(kind, &u, s, p.ss[x], p.dof);
                    let got = maps[j * v + x];
                    // f32 sums of n terms of size ~0.25: error ~ n * 2^-24 * 0.25, relative
                    // to u ~ sqrt(n) * 0.1; 1e-4 relative (plus 1e-5 absolute) is ample.
                    assert!((got - t).abs() <= 1e-4 * t.abs() + 1e-5, "n={n} j={j} v={x}: {got} vs {t}");
                    mx = mx.max(got);
                    counts[x] += (got >= observed[x]) as u32;
                }
                assert_eq!(res.max_stat[j], mx);
            }
            assert_eq!(res.exceed, counts);
        }
    }

    /// Splitting the permutations into batches changes nothing.
    #[test]
    fn batches_are_independent() {
        let p = random_problem(20, 300, 2, 1, StatKind::T, 9);
        let perms = PermSet::generate(20, PermKind::SignFlip, &[0; 20], 100, 1).unwrap();
        let mut eng = CpuEngine::new();
        eng.prepare(&p).unwrap();
        let obs = vec![0.5f32; 300];
        let whole = eng.run_batch(&perms, 0..100, Some(&obs), None).unwrap();
        let a = eng.run_batch(&perms, 0..37, Some(&obs), None).unwrap();
        let b = eng.run_batch(&perms, 37..100, Some(&obs), None).unwrap();
        let mut joined = a.max_stat.clone();
        joined.extend(&b.max_stat);
        assert_eq!(whole.max_stat, joined);
        let sum: Vec<u32> = a.exceed.iter().zip(&b.exceed).map(|(x, y)| x + y).collect();
        assert_eq!(whole.exceed, sum);
    }
}

#[cfg(test)]
mod timing {
    use super::*;
    use crate::perm::{PermKind, PermSet};
    /// `cargo test --release -- --ignored cpu_engine_speed --nocapture`: a quick look, not a bench.
    #[test]
    #[ignore]
    fn cpu_engine_speed() {
        let (n, v, q) = (58usize, 228_000usize, 2usize);
        let e: Vec<f32> = (0..n * v).map(|i| ((i * 2654435761usize) % 1000) as f32 / 1000.0 - 0.5).collect();
        let qb: Vec<f32> = (0..n * q).map(|i| ((i * 7919) % 100) as f32 / 100.0 - 0.5).collect();
        let ss = vec![100f32; v];
        let p = ContrastProblem { n, v, q, s: 1, kind: StatKind::T, dof: 56.0, qbasis: qb, e, ss };
        let perms = PermSet::generate(n, PermKind::SignFlip, &vec![0; n], 1000, 1).unwrap();
        let mut eng = CpuEngine::new();
        eng.prepare(&p).unwrap();
        let obs = vec![1.0f32; v];
        let t = std::time::Instant::now();
        let mut done = 0;
        while done < 1000 {
            let b = eng.preferred_batch().min(1000 - done);
            eng.run_batch(&perms, done..done + b, Some(&obs), None).unwrap();
            done += b;
        }
        let s = t.elapsed().as_secs_f64();
        let nn = 2048;
        let (a, b, mut c) = (vec![1f32; nn * nn], vec![0.5f32; nn * nn], vec![0f32; nn * nn]);
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = std::time::Instant::now();
            unsafe {
                gemm::gemm(nn, nn, nn, c.as_mut_ptr(), 1, nn as isize, false, a.as_ptr(), 1, nn as isize, b.as_ptr(), 1, nn as isize,
                    0.0f32, 1.0f32, false, false, false, gemm::Parallelism::Rayon(rayon::current_num_threads()));
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!("sgemm peak {:.1} GFLOP/s", 2.0 * (nn as f64).powi(3) / best / 1e9);
        println!("1000 perms: {s:.3} s, {:.1} GFLOP/s ({})", 1000.0 * p.flops_per_perm() / s / 1e9, CpuEngine::isa());
    }
}
