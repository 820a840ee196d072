//! The table-driven product (DESIGN.md, "Sign flips without multiplications"): the
//! coefficients u_jk = (Q' P_j E)[k, v] of a batch without multiplications, where the
//! permutation set allows it.
//!
//! - Sign flips (no row exchanges): u_jk = Σ_i s_ji W_k[i], W_k = Q[:, k] ∘ E row-wise. The N
//!   rows are cut into blocks of b; for each block, k and voxel tile, the 2^b signed sums
//!   of the block's rows are tabulated once per batch; u_jk is then the sum over blocks of
//!   the entry that s_j's b sign bits in the block select: N/b table rows added instead of N
//!   multiply-adds.
//! - Relabelings whose coefficient rows take G few distinct values (the rows of Q fall into
//!   G groups: a design of group indicators without covariates): row m of A_j is
//!   c_{g(src_j(m))}, so u_jk = Σ_g c_kg S_jg with S_jg the sum of E over the rows that
//!   permutation j gives group g. With S_j0 = total − Σ_{g>0} S_jg,
//!   u_jk = c_k0 · total + Σ_{g>0} (c_kg − c_k0) S_jg, and each S_jg is again a sum of table
//!   entries, now of 0/1 subsets of E's rows (one table set for every k).
//!
//! Every table entry is built from the entry without its highest set bit by one addition,
//! so each entry is the left-to-right f32 sum of exactly b terms, rounded like a direct
//! sum; a coefficient is N terms summed in a tree of depth N at most. Its error is
//! therefore bounded as the matrix product's is, |û − u| ≤ γ_{N+1} Σ_i |Q_ik E_iv|
//! (γ_n = nε/(1 − nε), ε = 2^-24), and the statistics equal the matrix path's within
//! float rounding, not bit for bit.
//!
//! Tiles are the matrix path's [`TILE`] voxels, so the epilogue and the reductions are
//! the same code ([`reduce_tile`]).

// Table and voxel loops index several parallel arrays; iterator chains would hide that.
#![allow(clippy::needless_range_loop)]
use super::kernels::{reduce_tile, Batch, Coefficients};
use super::{PERM_BLOCK, TILE};
use voxflip_stats::{ContrastProblem, PermKind, PermSet};

/// The largest block of rows: 2^8 table entries of TILE floats per block and k.
pub(crate) const MAX_BITS: usize = 8;
/// At most this many distinct coefficient rows for the relabeling tables (each group past
/// the first costs one pass of lookups per permutation).
pub(crate) const MAX_GROUPS: usize = 4;
/// Bytes of tables per worker at most: they are read at random by the lookups, so they
/// should stay in the core's L2.
const TABLE_BYTES: usize = 1 << 20;

/// What the tables hold, for which permutation set.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum TableForm {
    /// Signed sums of W_k = Q[:, k] ∘ E, one table set per k.
    Signs,
    /// 0/1 subset sums of E; `group_of_row[i]` is the group of Q's row i and `coef[k * G + g]`
    /// its coefficient c_kg (`groups` = G).
    Groups { groups: usize, group_of_row: Vec<u8>, coef: Vec<f32> },
}

/// How one batch runs on the tables.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TablePlan {
    pub form: TableForm,
    /// Rows per block.
    pub bits: usize,
    /// Blocks: ceil(N / bits) (the last one padded with zero rows).
    pub blocks: usize,
}

impl TablePlan {
    /// The plan for `perms` on `p`, or None when the set cannot use tables (rows exchanged
    /// with sign flips, or relabelings of more than [`MAX_GROUPS`] distinct coefficient
    /// rows). The block size depends on the problem alone, never on the batch, so that
    /// every batch size and shard split sums the same terms in the same order.
    pub fn for_set(p: &ContrastProblem, perms: &PermSet) -> Option<TablePlan> {
        let form = match perms.kind {
            PermKind::SignFlip => TableForm::Signs,
            PermKind::Permute => groups_of_rows(p)?,
            PermKind::Both => return None,
        };
        let sets = match &form {
            TableForm::Signs => p.q,
            TableForm::Groups { .. } => 1,
        };
        let passes = match &form {
            TableForm::Signs => p.q,
            TableForm::Groups { groups, .. } => groups - 1,
        };
        let bits = best_bits(p.n, PREFERRED_BATCH, sets, passes);
        Some(TablePlan { form, bits, blocks: p.n.div_ceil(bits) })
    }

    /// Table entries per block.
    fn entries(&self) -> usize {
        1 << self.bits
    }

    /// Table sets: one per k for sign flips, one for the groups.
    fn sets(&self, q: usize) -> usize {
        match self.form {
            TableForm::Signs => q,
            TableForm::Groups { .. } => 1,
        }
    }

    /// Codes per permutation: one per block and lookup pass (k for sign flips, the groups
    /// past the first otherwise).
    fn passes(&self) -> usize {
        match &self.form {
            TableForm::Signs => 1,
            TableForm::Groups { groups, .. } => groups - 1,
        }
    }

    /// The table index of each block for permutations `range` of `perms`:
    /// `codes[(j * passes + pass) * blocks + blk]`, bit r of a code standing for row
    /// blk * bits + r (negated, or in the pass's group).
    pub fn codes(&self, perms: &PermSet, range: std::ops::Range<usize>) -> Vec<u8> {
        let (bits, blocks, passes) = (self.bits, self.blocks, self.passes());
        let n = perms.n;
        let mut codes = vec![0u8; range.len() * passes * blocks];
        for (jj, j) in range.enumerate() {
            match &self.form {
                TableForm::Signs => {
                    let words = perms.flip_words(j);
                    for blk in 0..blocks {
                        let pos = blk * bits;
                        let mut c = 0u32;
                        for r in 0..bits.min(n - pos) {
                            let m = pos + r;
                            c |= ((words[m / 32] >> (m % 32)) & 1) << r;
                        }
                        codes[jj * blocks + blk] = c as u8;
                    }
                }
                TableForm::Groups { group_of_row, .. } => {
                    for m in 0..n {
                        let g = group_of_row[perms.source(j, m)] as usize;
                        if g > 0 {
                            codes[((jj * passes) + g - 1) * blocks + m / bits] |= 1 << (m % bits);
                        }
                    }
                }
            }
        }
        codes
    }
}

/// The rows of Q as G groups of equal rows, when there are at most [`MAX_GROUPS`]. Rows
/// within 4 ulps of a group's first row (per coefficient, relative to the row's largest)
/// join it: Q is computed in f64 and rounded, so rows that are equal in exact arithmetic
/// may differ in the last bits; the representative's values then stand in for theirs, an
/// error of the order of the rounding the product itself makes.
fn groups_of_rows(p: &ContrastProblem) -> Option<TableForm> {
    let (n, q) = (p.n, p.q);
    let row = |i: usize| &p.qbasis[i * q..(i + 1) * q];
    let mut reps: Vec<usize> = Vec::new();
    let mut group_of_row = vec![0u8; n];
    for i in 0..n {
        let r = row(i);
        let scale = r.iter().fold(0f32, |a, x| a.max(x.abs()));
        let tol = 4.0 * f32::EPSILON * scale;
        match reps.iter().position(|&g| row(g).iter().zip(r).all(|(a, b)| (a - b).abs() <= tol)) {
            Some(g) => group_of_row[i] = g as u8,
            None => {
                if reps.len() == MAX_GROUPS {
                    return None;
                }
                group_of_row[i] = reps.len() as u8;
                reps.push(i);
            }
        }
    }
    if reps.len() < 2 {
        return None;
    }
    let groups = reps.len();
    let mut coef = vec![0f32; q * groups];
    for (g, &i) in reps.iter().enumerate() {
        for k in 0..q {
            coef[k * groups + g] = row(i)[k];
        }
    }
    Some(TableForm::Groups { groups, group_of_row, coef })
}

/// The block size that minimizes the work of a batch, N/b lookups per permutation and pass
/// plus 2^b entries per table to build, among those whose tables fit [`TABLE_BYTES`].
fn best_bits(n: usize, nperm: usize, sets: usize, passes: usize) -> usize {
    (1..=MAX_BITS)
        .filter(|&b| b == 1 || sets * n.div_ceil(b) * (1 << b) * TILE * 4 <= TABLE_BYTES)
        .min_by_key(|&b| {
            let blocks = n.div_ceil(b);
            blocks * (nperm * passes + 2 * sets * (1 << b))
        })
        .unwrap_or(1)
}

/// A worker's table buffers, reused from tile to tile.
#[derive(Default)]
pub(super) struct TableScratch {
    /// The tile's table rows: (set, block, entry) x TILE.
    tables: Vec<f32>,
    /// The rows being tabulated: blocks * bits x TILE (zero rows past N).
    rows: Vec<f32>,
    ubuf: Vec<f32>,
    /// Group sums of one permutation (groups past the first) x TILE.
    sums: Vec<f32>,
}

/// Tabulates `rows` (blocks * bits rows of TILE) into `tables` (blocks * 2^bits rows):
/// entry c of a block is Σ_r (bit r of c ? neg(w_r) : w_r) summed r = 0, 1, ..., with
/// `neg(w) = -w` (sign tables) or 0 (subset tables: a set bit adds, a clear one does not —
/// then the roles swap, see `subset`).
#[inline(always)]
fn tabulate(rows: &[f32], bits: usize, blocks: usize, subset: bool, tables: &mut [f32]) {
    let entries = 1 << bits;
    for blk in 0..blocks {
        let t = &mut tables[blk * entries * TILE..(blk + 1) * entries * TILE];
        t[..TILE].fill(0.0);
        for r in 0..bits {
            let w: &[f32; TILE] = rows[(blk * bits + r) * TILE..][..TILE].try_into().unwrap();
            let half = 1 << r;
            // Entries c < 2^r hold the sums of rows 0..r; entry c + 2^r has row r's bit set.
            let (lo, hi) = t[..2 * half * TILE].split_at_mut(half * TILE);
            for c in 0..half {
                let a: &mut [f32; TILE] = (&mut lo[c * TILE..(c + 1) * TILE]).try_into().unwrap();
                let b: &mut [f32; TILE] = (&mut hi[c * TILE..(c + 1) * TILE]).try_into().unwrap();
                for x in 0..TILE {
                    let base = a[x];
                    if subset {
                        b[x] = base + w[x];
                    } else {
                        b[x] = base - w[x];
                        a[x] = base + w[x];
                    }
                }
            }
        }
    }
}

/// Adds the table rows that `codes` select (one per block) into `out`, block by block.
#[inline(always)]
fn lookup(tables: &[f32], codes: &[u8], entries: usize, out: &mut [f32]) {
    let first: &[f32; TILE] = tables[codes[0] as usize * TILE..][..TILE].try_into().unwrap();
    // Accumulated in a local array (registers), stored once.
    let mut acc = *first;
    for (blk, &c) in codes.iter().enumerate().skip(1) {
        let row: &[f32; TILE] = tables[(blk * entries + c as usize) * TILE..][..TILE].try_into().unwrap();
        for x in 0..TILE {
            acc[x] += row[x];
        }
    }
    out.copy_from_slice(&acc);
}

/// One tile, all permutations of the batch, through the tables.
#[inline(always)]
fn tile_body(plan: &TablePlan, codes: &[u8], batch: &Batch, v0: usize, s: &mut TableScratch, maxes: &mut [f32]) {
    let p = batch.p;
    let (n, v, q) = (p.n, p.v, p.q);
    let w = TILE.min(v - v0);
    let (bits, blocks, entries) = (plan.bits, plan.blocks, plan.entries());
    let sets = plan.sets(q);
    let passes = plan.passes();
    let set_len = blocks * entries * TILE;
    s.tables.resize(sets * set_len, 0.0);
    s.rows.clear();
    s.rows.resize(blocks * bits * TILE, 0.0);
    let e_row = |i: usize| &p.e[i * v + v0..i * v + v0 + w];
    let mut total = [0f32; TILE];
    match &plan.form {
        TableForm::Signs => {
            for k in 0..q {
                for i in 0..n {
                    let qk = p.qbasis[i * q + k];
                    let dst = &mut s.rows[i * TILE..i * TILE + w];
                    for (d, &e) in dst.iter_mut().zip(e_row(i)) {
                        *d = qk * e;
                    }
                }
                tabulate(&s.rows, bits, blocks, false, &mut s.tables[k * set_len..(k + 1) * set_len]);
            }
        }
        TableForm::Groups { .. } => {
            for i in 0..n {
                s.rows[i * TILE..i * TILE + w].copy_from_slice(e_row(i));
                for x in 0..TILE {
                    total[x] += s.rows[i * TILE + x];
                }
            }
            tabulate(&s.rows, bits, blocks, true, &mut s.tables[..set_len]);
        }
    }
    let TableScratch { tables, ubuf, sums, .. } = s;
    sums.resize(passes * TILE, 0.0);
    let mut lookups = Lookups { plan, codes, tables, sums, total: &total, q };
    reduce_tile(batch, v0, ubuf, maxes, &mut lookups);
}

/// What the lookups of a tile read.
struct Lookups<'a> {
    plan: &'a TablePlan,
    codes: &'a [u8],
    tables: &'a [f32],
    sums: &'a mut [f32],
    total: &'a [f32; TILE],
    q: usize,
}

impl Coefficients for Lookups<'_> {
    #[inline(always)]
    fn produce(&mut self, pb: usize, np: usize, ubuf: &mut [f32]) {
        let Lookups { plan, codes, tables, sums, total, q } = self;
        let (q, codes, tables, total) = (*q, *codes, *tables, *total);
        let (blocks, entries, passes) = (plan.blocks, plan.entries(), plan.passes());
        let set_len = blocks * entries * TILE;
    for jj in 0..np {
        let j = pb + jj;
        let u = &mut ubuf[jj * q * TILE..(jj + 1) * q * TILE];
        match &plan.form {
            TableForm::Signs => {
                let c = &codes[j * blocks..(j + 1) * blocks];
                for k in 0..q {
                    lookup(&tables[k * set_len..], c, entries, &mut u[k * TILE..(k + 1) * TILE]);
                }
            }
            TableForm::Groups { groups, coef, .. } => {
                for g in 0..passes {
                    let c = &codes[(j * passes + g) * blocks..(j * passes + g + 1) * blocks];
                    lookup(tables, c, entries, &mut sums[g * TILE..(g + 1) * TILE]);
                }
                let g_n = *groups;
                for k in 0..q {
                    let c0 = coef[k * g_n];
                    let uk: &mut [f32; TILE] = (&mut u[k * TILE..(k + 1) * TILE]).try_into().unwrap();
                    for x in 0..TILE {
                        uk[x] = c0 * total[x];
                    }
                    for g in 1..g_n {
                        let d = coef[k * g_n + g] - c0;
                        let sg: &[f32; TILE] = sums[(g - 1) * TILE..g * TILE].try_into().unwrap();
                        for x in 0..TILE {
                            uk[x] += d * sg[x];
                        }
                    }
                }
            }
        }
    }
    }
}

/// The tile function of one instruction set (see `kernels::TileFn`).
pub(super) type TableTileFn = unsafe fn(&TablePlan, &[u8], &Batch, usize, &mut TableScratch, &mut [f32]);

/// The tile function for `isa` (see `CpuEngine::isa`).
pub(super) fn tile_fn(isa: &str) -> TableTileFn {
    match isa {
        #[cfg(target_arch = "x86_64")]
        "avx512f" => tile_avx512,
        #[cfg(target_arch = "x86_64")]
        "avx2+fma" => tile_avx2,
        _ => tile_portable,
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn tile_avx512(plan: &TablePlan, codes: &[u8], b: &Batch, v0: usize, s: &mut TableScratch, m: &mut [f32]) {
    tile_body(plan, codes, b, v0, s, m)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(plan: &TablePlan, codes: &[u8], b: &Batch, v0: usize, s: &mut TableScratch, m: &mut [f32]) {
    tile_body(plan, codes, b, v0, s, m)
}

// Safe, but of the type of the others.
unsafe fn tile_portable(plan: &TablePlan, codes: &[u8], b: &Batch, v0: usize, s: &mut TableScratch, m: &mut [f32]) {
    tile_body(plan, codes, b, v0, s, m)
}

/// Permutations per batch the table path prefers: enough that building the tables costs
/// little beside the lookups.
pub(crate) const PREFERRED_BATCH: usize = 40 * PERM_BLOCK;
