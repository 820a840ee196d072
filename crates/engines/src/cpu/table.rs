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
//! A tile is the matrix path's [`TILE`] voxels, for the epilogue and the reductions (the
//! matrix path's, [`reduce_tile`]), but its tables are built per sub-tile of [`SUB`] voxels
//! (one AVX-512 vector), small enough to stay in L1 while a long block of
//! [`PERM_BLOCK`] permutations reads them at random: the lookups, not the additions, set
//! the pace, and from L2 they are several times slower.

// Table and voxel loops index several parallel arrays; iterator chains would hide that.
#![allow(clippy::needless_range_loop)]
use super::kernels::{reduce_tile, Batch, Coefficients};
use super::TILE;
use voxflip_stats::{ContrastProblem, PermKind, PermSet};

/// The largest block of rows: 2^8 table entries of TILE floats per block and k.
pub(crate) const MAX_BITS: usize = 8;
/// At most this many distinct coefficient rows for the relabeling tables (each group past
/// the first costs one pass of lookups per permutation).
pub(crate) const MAX_GROUPS: usize = 4;
/// Voxels per sub-tile: one table row.
pub(crate) const SUB: usize = 16;
/// Permutations per block of the epilogue: each sub-tile's tables are read by this many
/// permutations before the next sub-tile's (the U buffer, PERM_BLOCK x q x TILE floats,
/// streams through L2).
pub(crate) const PERM_BLOCK: usize = 192;
/// Bytes of a sub-tile's tables at most, so that they stay in L1 (48 KiB on current x86
/// cores, 32 KiB on older ones, beside the other buffers).
const L1_TABLE_BYTES: usize = 30 << 10;
/// The same where even one-row blocks do not fit L1 (many rows and coefficients): L2.
const L2_TABLE_BYTES: usize = 256 << 10;

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

    /// Whether the tables beat the matrix product here: measured on AVX-512 cores, they do
    /// only while a sub-tile's tables of blocks of 4 rows or more stay in L1 (q N up to
    /// about 120); from L2 each lookup waits on the cache and the matrix product is faster
    /// (several times so at N = 5,000). `Product::Auto` takes the tables only then.
    pub fn pays_off(&self, q: usize) -> bool {
        self.bits >= 4 && self.sets(q) * self.blocks * self.entries() * SUB * 4 <= L1_TABLE_BYTES
    }

    /// The plan with `bits` rows per block (1 to [`MAX_BITS`]) for N = `n` rows.
    pub fn with_bits(self, bits: usize, n: usize) -> TablePlan {
        let bits = bits.clamp(1, MAX_BITS);
        TablePlan { bits, blocks: n.div_ceil(bits), ..self }
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

    /// The codes of [`TablePlan::codes`] as the offsets (in floats) of the rows they select
    /// within a set of tables, so that a lookup is one load and its additions.
    pub fn row_offsets(&self, codes: &[u8]) -> Vec<u32> {
        let blocks = self.blocks;
        codes.iter().enumerate().map(|(i, &c)| (((i % blocks) << self.bits) + c as usize) as u32 * SUB as u32).collect()
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
/// plus 2^(b+1) additions per table to build, among those whose tables fit L1
/// ([`L1_TABLE_BYTES`]), else L2.
fn best_bits(n: usize, nperm: usize, sets: usize, passes: usize) -> usize {
    let bytes = |b: usize| sets * n.div_ceil(b) * (1 << b) * SUB * 4;
    let budget = if bytes(1) <= L1_TABLE_BYTES { L1_TABLE_BYTES } else { L2_TABLE_BYTES };
    (1..=MAX_BITS)
        .filter(|&b| b == 1 || bytes(b) <= budget)
        .min_by_key(|&b| n.div_ceil(b) * (nperm * passes + 2 * sets * (1 << b)))
        .unwrap_or(1)
}

/// A worker's table buffers, reused from tile to tile.
#[derive(Default)]
pub(super) struct TableScratch {
    /// The tile's tables: (sub-tile, set, block, entry) x SUB floats.
    tables: Vec<f32>,
    /// The rows being tabulated: blocks * bits x SUB (zero rows past N).
    rows: Vec<f32>,
    ubuf: Vec<f32>,
    /// Group sums of a block of permutations: (permutation, group past the first) x TILE.
    sums: Vec<f32>,
}

/// Tabulates `rows` (blocks * bits rows of SUB) into `tables` (blocks * 2^bits rows):
/// entry c of a block is the left-to-right sum over its rows r of ±w_r (sign tables: bit r
/// of c set = −w_r) or of the w_r whose bit is set (subset tables), each entry one
/// addition from the entry without its top bit.
#[inline(always)]
fn tabulate(rows: &[f32], bits: usize, blocks: usize, subset: bool, tables: &mut [f32]) {
    let entries = 1 << bits;
    for blk in 0..blocks {
        let t = &mut tables[blk * entries * SUB..(blk + 1) * entries * SUB];
        t[..SUB].fill(0.0);
        for r in 0..bits {
            let w: &[f32; SUB] = rows[(blk * bits + r) * SUB..][..SUB].try_into().unwrap();
            let half = 1 << r;
            // Entries c < 2^r hold the sums of rows 0..r; entry c + 2^r has row r's bit set.
            let (lo, hi) = t[..2 * half * SUB].split_at_mut(half * SUB);
            for c in 0..half {
                let a: &mut [f32; SUB] = (&mut lo[c * SUB..(c + 1) * SUB]).try_into().unwrap();
                let b: &mut [f32; SUB] = (&mut hi[c * SUB..(c + 1) * SUB]).try_into().unwrap();
                for x in 0..SUB {
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

/// Permutations processed together by the lookups: each adds a chain of `blocks`
/// dependent additions, so several interleaved keep the adders busy instead of waiting on
/// one chain's latency.
const LOOKUP_GROUP: usize = 4;

/// Where [`lookup_block`] reads and writes.
struct LookupJob<'a> {
    /// The sub-tile's first set of tables used; K sets follow, `set_len` floats apart.
    tables: &'a [f32],
    set_len: usize,
    /// `codes[j * stride + blk]`: the offset of local permutation j's row in block `blk`
    /// ([`TablePlan::row_offsets`]).
    codes: &'a [u32],
    stride: usize,
    blocks: usize,
    entries: usize,
    /// Permutation j's sum for set k goes to `dst[(j * per_perm + first + k) * TILE + offset..]`.
    per_perm: usize,
    first: usize,
    offset: usize,
}

/// For each of `P` permutations from `j0` and each of `K` table sets, the sum of the table
/// rows its codes select (one per block, blocks in order, from 0), into `out[j][k]`; one
/// code serves the K sets.
#[inline(always)]
fn lookup<const P: usize, const K: usize>(job: &LookupJob, j0: usize, out: &mut [[[f32; SUB]; K]; P]) {
    let LookupJob { tables, set_len, codes, stride, blocks, entries, .. } = *job;
    assert!(tables.len() >= (K - 1) * set_len + blocks * entries * SUB);
    assert!(codes.len() >= (j0 + P - 1) * stride + blocks);
    // Accumulated in local arrays (registers), stored once.
    let mut acc = [[[0f32; SUB]; K]; P];
    for blk in 0..blocks {
        for j in 0..P {
            // SAFETY: the offsets come from `TablePlan::row_offsets` of this plan, so each
            // is below blocks * entries * SUB; with blk < blocks, k < K and the asserts
            // above, every read is in bounds.
            let at = unsafe { *codes.get_unchecked((j0 + j) * stride + blk) } as usize;
            for k in 0..K {
                let row = unsafe { &*(tables.as_ptr().add(k * set_len + at) as *const [f32; SUB]) };
                add_row(&mut acc[j][k], row);
            }
        }
    }
    *out = acc;
}

/// acc += row, one vector.
#[inline(always)]
fn add_row(acc: &mut [f32; SUB], row: &[f32; SUB]) {
    for x in 0..SUB {
        acc[x] += row[x];
    }
}

/// Stores permutation `j`'s K sums where `job` says.
#[inline(always)]
fn store<const K: usize>(job: &LookupJob, j: usize, sums: &[[f32; SUB]; K], dst: &mut [f32]) {
    for (k, row) in sums.iter().enumerate() {
        dst[(j * job.per_perm + job.first + k) * TILE + job.offset..][..SUB].copy_from_slice(row);
    }
}

/// [`lookup`] for local permutations 0..np, [`LOOKUP_GROUP`] at a time.
#[inline(always)]
fn lookup_block<const K: usize>(job: &LookupJob, np: usize, dst: &mut [f32]) {
    let mut group = [[[0f32; SUB]; K]; LOOKUP_GROUP];
    let mut one = [[[0f32; SUB]; K]; 1];
    let mut j = 0;
    while j + LOOKUP_GROUP <= np {
        lookup(job, j, &mut group);
        for (g, sums) in group.iter().enumerate() {
            store(job, j + g, sums, dst);
        }
        j += LOOKUP_GROUP;
    }
    while j < np {
        lookup(job, j, &mut one);
        store(job, j, &one[0], dst);
        j += 1;
    }
}

/// One tile, all permutations of the batch, through the tables.
#[inline(always)]
fn tile_body(plan: &TablePlan, codes: &[u32], batch: &Batch, v0: usize, s: &mut TableScratch, maxes: &mut [f32]) {
    let p = batch.p;
    let (n, v, q) = (p.n, p.v, p.q);
    let (bits, blocks, entries) = (plan.bits, plan.blocks, plan.entries());
    let sets = plan.sets(q);
    let set_len = blocks * entries * SUB;
    let sub_len = sets * set_len;
    s.tables.resize(TILE / SUB * sub_len, 0.0);
    let mut total = [0f32; TILE];
    for sub in 0..TILE / SUB {
        // A sub-tile past the last voxel tabulates zero rows.
        let x0 = (v0 + sub * SUB).min(v);
        let w = SUB.min(v - x0);
        s.rows.clear();
        s.rows.resize(blocks * bits * SUB, 0.0);
        let e_row = |i: usize| &p.e[i * v + x0..i * v + x0 + w];
        let t = &mut s.tables[sub * sub_len..(sub + 1) * sub_len];
        match &plan.form {
            TableForm::Signs => {
                for k in 0..q {
                    for i in 0..n {
                        let qk = p.qbasis[i * q + k];
                        for (d, &e) in s.rows[i * SUB..i * SUB + w].iter_mut().zip(e_row(i)) {
                            *d = qk * e;
                        }
                    }
                    tabulate(&s.rows, bits, blocks, false, &mut t[k * set_len..(k + 1) * set_len]);
                }
            }
            TableForm::Groups { .. } => {
                for i in 0..n {
                    s.rows[i * SUB..i * SUB + w].copy_from_slice(e_row(i));
                    for x in 0..SUB {
                        total[sub * SUB + x] += s.rows[i * SUB + x];
                    }
                }
                tabulate(&s.rows, bits, blocks, true, &mut t[..set_len]);
            }
        }
    }
    let TableScratch { tables, ubuf, sums, .. } = s;
    let mut lookups = Lookups { plan, codes, tables, sums, total: &total, q };
    reduce_tile::<TILE, PERM_BLOCK>(batch, v0, ubuf, maxes, &mut lookups);
}

/// What the lookups of a tile read.
struct Lookups<'a> {
    plan: &'a TablePlan,
    codes: &'a [u32],
    tables: &'a [f32],
    sums: &'a mut Vec<f32>,
    total: &'a [f32; TILE],
    q: usize,
}

impl Coefficients for Lookups<'_> {
    #[inline(always)]
    fn produce(&mut self, pb: usize, np: usize, ubuf: &mut [f32]) {
        let Lookups { plan, codes, tables, sums, total, q } = self;
        let (q, codes, tables, total) = (*q, *codes, *tables, *total);
        let (blocks, entries, passes) = (plan.blocks, plan.entries(), plan.passes());
        let set_len = blocks * entries * SUB;
        let sub_len = plan.sets(q) * set_len;
        let stride = passes * blocks;
        let codes = &codes[pb * stride..];
        sums.resize(PERM_BLOCK * passes * TILE, 0.0);
        for sub in 0..TILE / SUB {
            let sub_tables = &tables[sub * sub_len..(sub + 1) * sub_len];
            // Sums from table sets `set`.. into slots `first`.. of each permutation's
            // `per_perm`, reading the codes from `code0` on.
            let job = |set: usize, first: usize, code0: usize, per_perm: usize| LookupJob {
                tables: &sub_tables[set * set_len..],
                set_len,
                codes: &codes[code0..],
                stride,
                blocks,
                entries,
                per_perm,
                first,
                offset: sub * SUB,
            };
            match plan.form {
                TableForm::Signs => {
                    // One code selects a row in each of the q sets: two sets per pass.
                    let mut k = 0;
                    while k < q {
                        if q - k >= 2 {
                            lookup_block::<2>(&job(k, k, 0, q), np, ubuf);
                            k += 2;
                        } else {
                            lookup_block::<1>(&job(k, k, 0, q), np, ubuf);
                            k += 1;
                        }
                    }
                }
                TableForm::Groups { .. } => {
                    for g in 0..passes {
                        lookup_block::<1>(&job(0, g, g * blocks, passes), np, sums);
                    }
                }
            }
        }
        if let TableForm::Groups { groups, coef, .. } = &plan.form {
            let g_n = *groups;
            for jj in 0..np {
                for k in 0..q {
                    let c0 = coef[k * g_n];
                    let uk: &mut [f32; TILE] = (&mut ubuf[(jj * q + k) * TILE..][..TILE]).try_into().unwrap();
                    for x in 0..TILE {
                        uk[x] = c0 * total[x];
                    }
                    for g in 1..g_n {
                        let d = coef[k * g_n + g] - c0;
                        let sg: &[f32; TILE] = sums[(jj * passes + g - 1) * TILE..][..TILE].try_into().unwrap();
                        for x in 0..TILE {
                            uk[x] += d * sg[x];
                        }
                    }
                }
            }
        }
    }
}

/// The tile function of one instruction set (see `kernels::TileFn`).
pub(super) type TableTileFn = unsafe fn(&TablePlan, &[u32], &Batch, usize, &mut TableScratch, &mut [f32]);

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
unsafe fn tile_avx512(plan: &TablePlan, codes: &[u32], b: &Batch, v0: usize, s: &mut TableScratch, m: &mut [f32]) {
    tile_body(plan, codes, b, v0, s, m)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(plan: &TablePlan, codes: &[u32], b: &Batch, v0: usize, s: &mut TableScratch, m: &mut [f32]) {
    tile_body(plan, codes, b, v0, s, m)
}

// Safe, but of the type of the others.
unsafe fn tile_portable(plan: &TablePlan, codes: &[u32], b: &Batch, v0: usize, s: &mut TableScratch, m: &mut [f32]) {
    tile_body(plan, codes, b, v0, s, m)
}

/// Permutations per batch the table path prefers: enough that building the tables costs
/// little beside the lookups.
pub(crate) const PREFERRED_BATCH: usize = 10 * PERM_BLOCK;
