//! The CPU engine's inner loops: register-blocked microkernels (AVX-512, AVX2+FMA, portable),
//! the epilogue, and one tile's work over a batch.

// Voxel loops index several parallel arrays by voxel; iterator chains would hide that.
#![allow(clippy::needless_range_loop)]
use super::{PERM_BLOCK, ROWS, TILE};
use voxflip_stats::{statistic_of_sums, ContrastProblem, StatKind};

/// A raw pointer that rayon tasks may share because each task writes a disjoint range.
#[derive(Clone, Copy)]
pub(super) struct Disjoint<T>(pub(super) *mut T);
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

/// The statistic for one permutation over a tile, from its q rows of U (each W long):
/// |u|^2 and aux folded in the order k = 0, 1, ..., then the one formula
/// ([`statistic_of_sums`]) per voxel, in a loop the compiler vectorizes. Its correctly
/// rounded division and square root are monotone, so a permutation whose RSS is no larger
/// than the observed one never gets a smaller t: ties at the observed value (a contrast
/// that permutations leave unchanged, exhaustive sets) count exactly. An approximate
/// reciprocal square root, though faster, is not, and breaks such ties.
#[inline(always)]
fn epilogue_tile<const W: usize>(
    kind: StatKind,
    u: &[f32],
    q: usize,
    s: usize,
    ss: &[f32; W],
    dof: f32,
    out: &mut [f32; W],
) {
    let mut usq = [0f32; W];
    let mut num = [0f32; W];
    for k in 0..q {
        let uk: &[f32; W] = u[k * W..(k + 1) * W].try_into().unwrap();
        for w in 0..W {
            usq[w] += uk[w] * uk[w];
        }
        if k + 1 == s {
            num = usq;
        }
    }
    let aux: &[f32; W] = match kind {
        StatKind::T => u[..W].try_into().unwrap(),
        StatKind::F => &num,
    };
    let inv_s = 1.0 / s as f32;
    for w in 0..W {
        out[w] = statistic_of_sums(kind, usq[w], aux[w], ss[w], dof, inv_s);
    }
}

/// Lanes of the per-permutation maxima a worker keeps: a tile folds its statistics into
/// them with vector selects, and the lanes are folded into one maximum per permutation
/// once per batch ([`fold_lanes`]); a scalar fold per tile and permutation costs as much
/// as the table-driven product itself.
pub(super) const LANES: usize = 16;

/// `b` where it is larger than `a`, else `a`: NaN fails the comparison, so it never wins
/// a select, as `f32::max` skips it.
#[inline(always)]
fn larger(a: f32, b: f32) -> f32 {
    if b > a {
        b
    } else {
        a
    }
}

/// Folds the first `w` statistics of a tile into `lanes` (the others count as -inf).
#[inline(always)]
fn fold_into_lanes<const W: usize>(stat: &[f32; W], w: usize, lanes: &mut [f32]) {
    const { assert!(W.is_multiple_of(LANES)) };
    let lanes: &mut [f32; LANES] = lanes.try_into().unwrap();
    for c in 0..W / LANES {
        for l in 0..LANES {
            let x = c * LANES + l;
            lanes[l] = larger(lanes[l], if x < w { stat[x] } else { f32::NEG_INFINITY });
        }
    }
}

/// The maximum of each permutation from its [`LANES`] lanes (`lanes.len() / LANES` of them).
pub(super) fn fold_lanes(lanes: &[f32]) -> Vec<f32> {
    lanes.chunks_exact(LANES).map(|l| l.iter().fold(f32::NEG_INFINITY, |a, &b| larger(a, b))).collect()
}

/// What every tile of a batch reads and writes.
pub(super) struct Batch<'a> {
    pub p: &'a ContrastProblem,
    /// The batch's coefficient rows, padded with zero rows to a multiple of ROWS.
    pub a: &'a [f32],
    pub nperm: usize,
    pub observed: Option<&'a [f32]>,
    /// The batch's maps (nperm x V), when asked for; each tile writes its own voxels.
    pub maps: Option<Disjoint<f32>>,
    /// The exceedance counts (V), when observed is given; each tile writes its own voxels.
    pub counts: Option<Disjoint<u32>>,
    /// The mirror contrast's reductions from the same coefficients, when asked for.
    pub mirror: Option<Mirror<'a>>,
}

/// What a tile reduces for the mirror of a t contrast: the same problem with Q's first
/// column negated, whose statistic is therefore -T exactly (every operation of the product
/// and of the epilogue is odd in u_1), except that a zero stays +0 as the mirror's own
/// product gives it. Its maxima follow the batch's in `maxes` (as permutation nperm + j).
#[derive(Clone, Copy)]
pub(super) struct Mirror<'a> {
    pub observed: Option<&'a [f32]>,
    pub maps: Option<Disjoint<f32>>,
    pub counts: Option<Disjoint<u32>>,
}

/// A worker's buffers, reused from tile to tile.
#[derive(Default)]
pub(super) struct Scratch {
    /// The tile's residuals, N x TILE.
    packed: Vec<f32>,
    /// The projected coefficients of a block of permutations.
    ubuf: Vec<f32>,
}

/// The tile function of one instruction set: tile `v0` of `batch`, its maxima folded into
/// `maxes`. Unsafe because the SIMD versions need their CPU feature (detected at run time).
pub(super) type TileFn = unsafe fn(&Batch, usize, &mut Scratch, &mut [f32]);

/// The tile function for `isa` (see `CpuEngine::isa`).
pub(super) fn tile_fn(isa: &str) -> TileFn {
    match isa {
        #[cfg(target_arch = "x86_64")]
        "avx512f" => tile_avx512,
        #[cfg(target_arch = "x86_64")]
        "avx2+fma" => tile_avx2,
        _ => tile_portable,
    }
}

/// One tile, all permutations of the batch. Generic over the microkernel so each ISA gets
/// its own fully inlined copy.
#[inline(always)]
fn tile_body(
    micro: fn(&[f32], &[f32], usize, &mut [f32]),
    batch: &Batch,
    v0: usize,
    scratch: &mut Scratch,
    maxes: &mut [f32],
) {
    let p = batch.p;
    let (n, v, q) = (p.n, p.v, p.q);
    let w = TILE.min(v - v0);
    let Scratch { packed, ubuf } = scratch;
    packed.clear();
    packed.resize(n * TILE, 0.0);
    for i in 0..n {
        packed[i * TILE..i * TILE + w].copy_from_slice(&p.e[i * v + v0..i * v + v0 + w]);
    }
    reduce_tile::<TILE, PERM_BLOCK>(batch, v0, ubuf, maxes, &mut MatrixProduct { micro, a: batch.a, packed, n, q });
}

/// Forms a block's coefficients for [`reduce_tile`]. Not a closure: closures are compiled
/// apart from the tile function and without its target features when not inlined, and an
/// `#[inline(always)]` method is always inlined.
pub(super) trait Coefficients {
    /// Permutations pb..pb+np's q rows of U (each TILE long, permutation-major) into `ubuf`.
    fn produce(&mut self, pb: usize, np: usize, ubuf: &mut [f32]);
}

/// The matrix product: the batch's coefficient rows times the tile's packed residuals.
struct MatrixProduct<'a> {
    micro: fn(&[f32], &[f32], usize, &mut [f32]),
    a: &'a [f32],
    packed: &'a [f32],
    n: usize,
    q: usize,
}

impl Coefficients for MatrixProduct<'_> {
    #[inline(always)]
    fn produce(&mut self, pb: usize, np: usize, ubuf: &mut [f32]) {
        let (n, q, a) = (self.n, self.q, self.a);
        let r0 = pb * q;
        for r in (0..np * q).step_by(ROWS) {
            // A is padded to a multiple of ROWS rows, so the kernel always has ROWS rows.
            debug_assert!(r0 + r + ROWS <= a.len() / n);
            (self.micro)(&a[(r0 + r) * n..], self.packed, n, &mut ubuf[r * TILE..(r + ROWS) * TILE]);
        }
    }
}

/// The reductions of the tile of `W` voxels at `v0` over all permutations of the batch,
/// whichever product forms the coefficients: `coefficients` fills the U buffer (q rows of W
/// per permutation), at most `PB` permutations at a time; this runs the epilogue and keeps the per-permutation maxima (into `maxes`,
/// [`LANES`] per permutation),
/// the exceedance counts and, when asked for, the maps.
#[inline(always)]
pub(super) fn reduce_tile<const W: usize, const PB: usize>(
    batch: &Batch,
    v0: usize,
    ubuf: &mut Vec<f32>,
    maxes: &mut [f32],
    coefficients: &mut impl Coefficients,
) {
    let Batch { p, a: _, nperm, observed, maps, counts, mirror } = *batch;
    let (v, q) = (p.v, p.q);
    let w = W.min(v - v0);
    // Padding voxels get ss = 0 so their statistic is 0 and never counted.
    let mut ss = [0f32; W];
    ss[..w].copy_from_slice(&p.ss[v0..v0 + w]);
    let mut obs = [f32::INFINITY; W];
    if let Some(o) = observed {
        obs[..w].copy_from_slice(&o[v0..v0 + w]);
    }
    let mut cnt = [0u32; W];
    let mut obs2 = [f32::INFINITY; W];
    if let Some(o) = mirror.and_then(|m| m.observed) {
        obs2[..w].copy_from_slice(&o[v0..v0 + w]);
    }
    let mut cnt2 = [0u32; W];
    let rows_per_block = PB * q;
    let padded_rows = rows_per_block.div_ceil(ROWS) * ROWS;
    ubuf.resize(padded_rows * W, 0.0);
    let mut stat = [0f32; W];
    for pb in (0..nperm).step_by(PB) {
        let np = PB.min(nperm - pb);
        coefficients.produce(pb, np, ubuf);
        for j in 0..np {
            epilogue_tile::<W>(p.kind, &ubuf[j * q * W..(j + 1) * q * W], q, p.s, &ss, p.dof, &mut stat);
            let pj = pb + j;
            fold_into_lanes(&stat, w, &mut maxes[pj * LANES..(pj + 1) * LANES]);
            for x in 0..W {
                cnt[x] += (stat[x] >= obs[x]) as u32;
            }
            if let Some(m) = maps {
                // SAFETY: this task owns voxels v0..v0+w of every map in the batch.
                unsafe {
                    std::ptr::copy_nonoverlapping(stat.as_ptr(), m.0.add(pj * v + v0), w);
                }
            }
            if let Some(mr) = mirror {
                let mut neg = [0f32; W];
                for x in 0..W {
                    neg[x] = if stat[x] == 0.0 { 0.0 } else { -stat[x] };
                }
                fold_into_lanes(&neg, w, &mut maxes[(nperm + pj) * LANES..(nperm + pj + 1) * LANES]);
                for x in 0..W {
                    cnt2[x] += (neg[x] >= obs2[x]) as u32;
                }
                if let Some(m) = mr.maps {
                    // SAFETY: as for the maps above.
                    unsafe {
                        std::ptr::copy_nonoverlapping(neg.as_ptr(), m.0.add(pj * v + v0), w);
                    }
                }
            }
        }
    }
    if let Some(c) = mirror.and_then(|m| m.counts) {
        // SAFETY: this task owns voxels v0..v0+w of the mirror's counts.
        unsafe {
            for x in 0..w {
                *c.0.add(v0 + x) = cnt2[x];
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
unsafe fn tile_avx512(batch: &Batch, v0: usize, scratch: &mut Scratch, maxes: &mut [f32]) {
    tile_body(micro_avx512, batch, v0, scratch, maxes)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(batch: &Batch, v0: usize, scratch: &mut Scratch, maxes: &mut [f32]) {
    microkernel!(micro_avx2, |a: f32, b: f32, c: f32| a.mul_add(b, c));
    tile_body(micro_avx2, batch, v0, scratch, maxes)
}

// Safe, but of the type of the others.
unsafe fn tile_portable(batch: &Batch, v0: usize, scratch: &mut Scratch, maxes: &mut [f32]) {
    let _ = micro_fma; // kept for machines with FMA but without the x86 paths
    tile_body(micro_plain, batch, v0, scratch, maxes)
}
