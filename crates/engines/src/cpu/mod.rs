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
//!
//! Where the permutation set allows it (sign flips; relabelings of few distinct coefficient
//! rows), the coefficients come from tables instead ([`table`], the table-driven product,
//! [`Product`]); the epilogue and the reductions are the same.
use crate::error::{EngineError, Result};
use crate::{BatchResult, Product};
use kernels::{Batch, Disjoint, Scratch};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::Arc;
use voxflip_stats::{ContrastProblem, PermSet, StatKind, VarianceSmoothing};

mod kernels;
mod table;
mod voxelwise;

pub(crate) use table::TablePlan;

/// Voxels per tile (4 AVX-512 vectors).
pub(crate) const TILE: usize = 64;
/// Coefficient rows per microkernel call (ROWS x TILE accumulators = 24 zmm registers).
pub(crate) const ROWS: usize = 6;
/// Permutations per epilogue block: the U buffer is PERM_BLOCK*q x TILE floats (L1).
pub(crate) const PERM_BLOCK: usize = 24;

pub struct CpuEngine {
    problem: Option<ContrastProblem>,
    batch: usize,
    product: Product,
    /// The table path's rows per block instead of the planned one (tests reach the edges).
    table_bits: Option<usize>,
    /// randomise's variance smoothing of t contrasts ([`crate::Engine::set_smoothing`]).
    pub(crate) smoothing: Option<Arc<VarianceSmoothing>>,
}

impl Default for CpuEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuEngine {
    pub fn new() -> Self {
        CpuEngine { problem: None, batch: 240, product: Product::Auto, table_bits: None, smoothing: None }
    }

    /// Which product forms the coefficients (the table path where the set allows it, by
    /// default).
    pub fn set_product(&mut self, product: Product) {
        self.product = product;
    }

    /// Whether the batches of `perms` run on the tables.
    pub fn uses_tables(&self, perms: &PermSet) -> bool {
        self.table_plan(perms).is_some()
    }

    fn table_plan(&self, perms: &PermSet) -> Option<TablePlan> {
        match (self.product, &self.problem) {
            (Product::Gemm, _) | (_, None) => None,
            // Each voxel's own basis: no table serves them all.
            (_, Some(p)) if p.is_voxelwise() => None,
            (product, Some(p)) => TablePlan::for_set(p, perms)
                .filter(|plan| product == Product::Table || plan.pays_off(p.q))
                .map(|plan| match self.table_bits {
                    Some(bits) => plan.with_bits(bits, p.n),
                    None => plan,
                }),
        }
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

impl CpuEngine {
    /// What the engine is, for stderr and the sidecar.
    pub fn describe(&self) -> String {
        format!("cpu ({} threads, {})", rayon::current_num_threads(), Self::isa())
    }

    /// The smoothing and the prepared t problem's (q, dof, ss), when this engine smooths
    /// the variance of the prepared contrast (a t contrast with smoothing set).
    pub(crate) fn smoothed(&self) -> Option<(Arc<VarianceSmoothing>, usize, f32, &[f32])> {
        let p = self.problem.as_ref().filter(|p| p.kind == StatKind::T)?;
        Some((self.smoothing.clone()?, p.q, p.dof, &p.ss[..]))
    }

    /// Which statistic the next batches compute from the prepared problem (the smoothed
    /// path's F with s = q, from which the residual variance follows).
    pub(crate) fn set_statistic(&mut self, kind: StatKind, s: usize) {
        if let Some(p) = self.problem.as_mut() {
            p.kind = kind;
            p.s = s;
        }
    }

    /// Keep `problem` for the batches that follow.
    pub fn prepare(&mut self, problem: &ContrastProblem) -> Result<()> {
        let p = problem;
        if p.voxel_qbasis.as_ref().is_some_and(|b| b.len() != p.v * p.n * p.q) {
            return Err(EngineError::Invalid("per-voxel bases of the wrong size".into()));
        }
        self.problem = Some(problem.clone());
        Ok(())
    }

    /// The batch this engine prefers (permutations per call).
    pub fn preferred_batch(&self) -> usize {
        match self.product {
            Product::Gemm => self.batch,
            // Larger batches spread the building of the tables over more lookups; a set the
            // tables cannot serve runs the matrix product at this size just as well.
            Product::Auto | Product::Table => table::PREFERRED_BATCH,
        }
    }

    /// Run permutations `range` of `perms`: the maximum statistic of each, with `observed`
    /// the per-voxel exceedance counts, with `maps` (range.len() x V) every map.
    pub fn run_batch(
        &mut self,
        perms: &PermSet,
        range: Range<usize>,
        observed: Option<&[f32]>,
        maps: Option<&mut [f32]>,
    ) -> Result<BatchResult> {
        let (res, _) = self.run(perms, range, observed, maps, None)?;
        Ok(res)
    }

    /// [`CpuEngine::run_batch`] for a t contrast and its mirror (the contrast of the negated
    /// weights, whose problem is this one with Q's first column negated, so that its maps are
    /// -T), from one product: the mirror's maxima, its exceedance counts against
    /// `mirror_observed` and its maps in `mirror_maps`, equal to a run of the mirror's own
    /// problem.
    pub fn run_batch_mirrored(
        &mut self,
        perms: &PermSet,
        range: Range<usize>,
        observed: Option<&[f32]>,
        maps: Option<&mut [f32]>,
        mirror_observed: Option<&[f32]>,
        mirror_maps: Option<&mut [f32]>,
    ) -> Result<(BatchResult, BatchResult)> {
        let (res, mirror) = self.run(perms, range, observed, maps, Some((mirror_observed, mirror_maps)))?;
        Ok((res, mirror.expect("asked for")))
    }

    #[allow(clippy::type_complexity)]
    fn run(
        &mut self,
        perms: &PermSet,
        range: Range<usize>,
        observed: Option<&[f32]>,
        maps: Option<&mut [f32]>,
        mirror: Option<(Option<&[f32]>, Option<&mut [f32]>)>,
    ) -> Result<(BatchResult, Option<BatchResult>)> {
        let p = self.problem.as_ref().ok_or_else(|| EngineError::Invalid("run_batch before prepare".into()))?;
        let (n, v, q) = (p.n, p.v, p.q);
        let nperm = range.len();
        if range.end > perms.len() || perms.n != n {
            return Err(EngineError::Invalid(format!(
                "permutations {range:?} of {} with N = {} for N = {n}",
                perms.len(),
                perms.n
            )));
        }
        let wrong_map = |o: Option<&[f32]>, m: Option<&[f32]>| {
            o.is_some_and(|o| o.len() != v) || m.is_some_and(|m| m.len() != nperm * v)
        };
        if wrong_map(observed, maps.as_deref()) || mirror.as_ref().is_some_and(|(o, m)| wrong_map(*o, m.as_deref())) {
            return Err(EngineError::Invalid("observed map or maps buffer of the wrong size".into()));
        }
        if mirror.is_some() && p.kind != StatKind::T {
            return Err(EngineError::Invalid("only a t contrast has a mirror".into()));
        }
        let mut exceed = if observed.is_some() { vec![0u32; v] } else { Vec::new() };
        let maps = maps.map(|m| Disjoint(m.as_mut_ptr()));
        let counts = observed.map(|_| Disjoint(exceed.as_mut_ptr()));
        let mut mirror_exceed = match &mirror {
            Some((Some(_), _)) => vec![0u32; v],
            _ => Vec::new(),
        };
        let mirrored = mirror.is_some();
        let mirror = mirror.map(|(observed, maps)| kernels::Mirror {
            observed,
            maps: maps.map(|m| Disjoint(m.as_mut_ptr())),
            counts: observed.map(|_| Disjoint(mirror_exceed.as_mut_ptr())),
        });
        // The mirror's maxima follow the batch's.
        let slots = if mirrored { 2 * nperm } else { nperm };
        let max_stat = match self.table_plan(perms) {
            _ if p.is_voxelwise() => {
                let rows = voxelwise::PermRows::new(perms, range.clone());
                let batch = Batch { p, a: &[], nperm, observed, maps, counts, mirror };
                over_tiles(v, slots, |v0, scratch: &mut voxelwise::VoxelwiseScratch, maxes| {
                    voxelwise::tile(&batch, &rows, v0, scratch, maxes)
                })
            }
            Some(plan) => {
                let codes = plan.row_offsets(&plan.codes(perms, range.clone()));
                let batch = Batch { p, a: &[], nperm, observed, maps, counts, mirror };
                let tile = table::tile_fn(Self::isa());
                // SAFETY: `tile_fn` picked the function of the instruction set this machine has.
                over_tiles(v, slots, |v0, scratch: &mut table::TableScratch, maxes| unsafe {
                    tile(&plan, &codes, &batch, v0, scratch, maxes)
                })
            }
            None => {
                // Coefficient rows for the batch, padded with zero rows to a multiple of ROWS.
                let rows = (nperm * q).div_ceil(ROWS) * ROWS + ROWS;
                let mut a = vec![0f32; rows * n];
                for (jj, j) in range.clone().enumerate() {
                    perms.coefficient_rows(j, &p.qbasis, q, &mut a[jj * q * n..(jj + 1) * q * n]);
                }
                let batch = Batch { p, a: &a, nperm, observed, maps, counts, mirror };
                let tile = kernels::tile_fn(Self::isa());
                // SAFETY: as above.
                over_tiles(v, slots, |v0, scratch: &mut Scratch, maxes| unsafe { tile(&batch, v0, scratch, maxes) })
            }
        };
        if !mirrored {
            return Ok((BatchResult { max_stat, exceed }, None));
        }
        let mut max_stat = max_stat;
        let mirror_max = max_stat.split_off(nperm);
        Ok((BatchResult { max_stat, exceed }, Some(BatchResult { max_stat: mirror_max, exceed: mirror_exceed })))
    }
}

/// Runs `tile(v0, scratch, maxes)` for every tile of [`TILE`] of the V voxels in parallel,
/// each worker with its own scratch and maxima (`kernels::LANES` per permutation), and
/// returns the maxima of the `nperm` permutations.
fn over_tiles<S: Default + Send>(v: usize, nperm: usize, tile: impl Fn(usize, &mut S, &mut [f32]) + Sync) -> Vec<f32> {
    let lanes = (0..v.div_ceil(TILE))
        .into_par_iter()
        .fold(
            || (vec![f32::NEG_INFINITY; nperm * kernels::LANES], S::default()),
            |(mut maxes, mut scratch), t| {
                tile(t * TILE, &mut scratch, &mut maxes);
                (maxes, scratch)
            },
        )
        .map(|(m, _)| m)
        .reduce(
            || vec![f32::NEG_INFINITY; nperm * kernels::LANES],
            |mut x, y| {
                for (a, b) in x.iter_mut().zip(y) {
                    *a = a.max(b);
                }
                x
            },
        );
    kernels::fold_lanes(&lanes)
}

#[cfg(test)]
mod table_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use voxflip_stats::{statistic, PermKind, StatKind};

    fn random_problem(n: usize, v: usize, q: usize, s: usize, kind: StatKind, seed: u64) -> ContrastProblem {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let e: Vec<f32> = (0..n * v).map(|_| rng.random::<f32>() - 0.5).collect();
        let qbasis: Vec<f32> = (0..n * q).map(|_| rng.random::<f32>() - 0.5).collect();
        let ss: Vec<f32> = (0..v).map(|x| (0..n).map(|i| e[i * v + x] * e[i * v + x]).sum::<f32>() * 2.0).collect();
        ContrastProblem { n, v, q, s, kind, dof: (n - q) as f32, qbasis, e, ss, voxel_qbasis: None }
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

    /// A t contrast and its mirror from one product equal each run on its own problem (the
    /// mirror's: Q's first column negated) bit for bit: maxima, counts and maps, on both
    /// products, with sign flips and relabelings, with voxels whose residuals are zero on
    /// some rows (u_1 = 0 exactly on some permutations) or on all (ss = 0), and batches
    /// that end inside a block of permutations.
    #[test]
    fn mirrored_batch_equals_the_mirror_run_alone() {
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for product in [Product::Gemm, Product::Table] {
            for &(n, v, q, pk) in &[
                (13usize, 70usize, 2usize, PermKind::SignFlip),
                (20, 130, 3, PermKind::Permute),
                (9, 1, 1, PermKind::SignFlip),
            ] {
                let mut p = random_problem(n, v, q, 1, StatKind::T, 40 + n as u64);
                // The first rows of voxel 0 and every row of the last voxel are zero.
                for i in 0..n {
                    if i < n / 2 || v > 1 {
                        p.e[i * v] = 0.0;
                    }
                    p.e[i * v + v - 1] = if v > 1 { 0.0 } else { p.e[i * v + v - 1] };
                }
                p.ss[v - 1] = if v > 1 { 0.0 } else { p.ss[v - 1] };
                let mut m = p.clone();
                for row in m.qbasis.chunks_exact_mut(q) {
                    row[0] = -row[0];
                }
                let perms = PermSet::generate(n, pk, &(0..n as u32).collect::<Vec<_>>(), 61, 3).unwrap();
                let run_alone = |prob: &ContrastProblem, observed: Option<&[f32]>| {
                    let mut e = CpuEngine::new();
                    e.set_product(product);
                    e.prepare(prob).unwrap();
                    let mut maps = vec![0f32; perms.len() * v];
                    let r = e.run_batch(&perms, 0..perms.len(), observed, Some(&mut maps)).unwrap();
                    (r, maps)
                };
                // Observed maps that tie with permuted ones: the identity's.
                let (_, o1) = run_alone(&p, None);
                let (_, o2) = run_alone(&m, None);
                let (o1, o2) = (o1[..v].to_vec(), o2[..v].to_vec());
                let (alone1, maps1) = run_alone(&p, Some(&o1));
                let (alone2, maps2) = run_alone(&m, Some(&o2));
                let mut e = CpuEngine::new();
                e.set_product(product);
                e.prepare(&p).unwrap();
                let (mut got1, mut got2) = (BatchResult::default(), BatchResult::default());
                let (mut gm1, mut gm2) = (vec![0f32; perms.len() * v], vec![0f32; perms.len() * v]);
                for r in [0..25, 25..perms.len()] {
                    let span = r.start * v..r.end * v;
                    let (a, b) = e
                        .run_batch_mirrored(
                            &perms,
                            r.clone(),
                            Some(&o1),
                            Some(&mut gm1[span.clone()]),
                            Some(&o2),
                            Some(&mut gm2[span]),
                        )
                        .unwrap();
                    for (got, part) in [(&mut got1, a), (&mut got2, b)] {
                        got.max_stat.extend(part.max_stat);
                        got.exceed.resize(v, 0);
                        for (c, x) in got.exceed.iter_mut().zip(part.exceed) {
                            *c += x;
                        }
                    }
                }
                let what = format!("{product:?} n={n} v={v} {pk:?}");
                assert_eq!(bits(&got1.max_stat), bits(&alone1.max_stat), "{what}: maxima");
                assert_eq!(bits(&got2.max_stat), bits(&alone2.max_stat), "{what}: mirror maxima");
                assert_eq!(got1.exceed, alone1.exceed, "{what}: counts");
                assert_eq!(got2.exceed, alone2.exceed, "{what}: mirror counts");
                assert_eq!(bits(&gm1), bits(&maps1), "{what}: maps");
                assert_eq!(bits(&gm2), bits(&maps2), "{what}: mirror maps");
                // Not vacuous: the mirror's maps are the negated maps, and counts differ.
                assert!(maps2.iter().zip(&maps1).all(|(a, b)| *a == -*b));
                assert_ne!(alone1.exceed, alone2.exceed, "{what}");
            }
        }
    }
}
