//! The permutations of a run: what each contrast exchanges (its kind, which rows are alike,
//! which are never moved), the sets built from that, checked against the machine's memory
//! before they are built, and the answers of randomise's `-q` and `-Q`, and its `-P` file.
use crate::error::{Error, Result};
use crate::options::{AnalysisOptions, Distribution};
use nalgebra::DMatrix;
use std::fmt::Write as _;
use voxflip_stats::perm::{count_distinct_in_blocks, ln_count_distinct_in_blocks, SetPlan};
use voxflip_stats::{identical_row_labels, Blocks, Contrast, ContrastModel, Design, PermKind, PermSet, StatKind};

/// Bytes a run keeps per permutation per statistic of a contrast (the voxelwise maximum,
/// TFCE, cluster extent, cluster mass): the null as it accumulates (4), the copy p-values
/// are computed from (4) and its sorted copy (4), with 4 more of slack for the state
/// written to checkpoints and shards.
const NULL_BYTES: u64 = 16;

/// Why a contrast's permutations are of `kind` (for stderr and the sidecar).
pub fn reason_for(kind: PermKind, opts: &AnalysisOptions) -> String {
    if kind == opts.perm_kind {
        opts.perm_reason.clone()
    } else {
        "sign flips: the contrast tests the mean (the constant is not in its nuisance), which reordering rows cannot test".into()
    }
}

/// What each contrast's permutations exchange, and the sets: one per distinct exchange.
pub struct PermutationPlan {
    /// Per contrast.
    pub kinds: Vec<PermKind>,
    /// Per contrast, its set in `sets`.
    pub set_of: Vec<usize>,
    pub sets: Vec<PermSet>,
}

/// What one contrast's permutation set is built from.
#[derive(Clone, Debug, PartialEq)]
struct Exchange {
    kind: PermKind,
    /// Rows with equal labels are interchangeable: equal rows of the effective regressor
    /// (randomise's rule; see [`effective_regressor`]), so exchanging them is no new permutation.
    labels: Vec<u32>,
    blocks: Blocks,
}

/// Per contrast, what its permutations exchange.
///
/// The kind asked for, except that a contrast testing the constant (a mean; see
/// ContrastModel::tests_constant) is sign-flipped when the kind was not the user's choice:
/// randomise's one-sample rule, made per contrast. With --detectNull, the rows where the
/// contrast's effective regressor is zero stay in place (see [`null_rows`]).
fn exchanges(design: &Design, models: &[ContrastModel], opts: &AnalysisOptions, n: usize) -> Vec<Exchange> {
    let blocks = opts.blocks.clone().unwrap_or_else(|| Blocks::single(n));
    design
        .contrasts
        .iter()
        .zip(models)
        .map(|(contrast, m)| {
            let kind = if opts.flip_constant_contrasts && opts.perm_kind == PermKind::Permute && m.tests_constant() {
                PermKind::SignFlip
            } else {
                opts.perm_kind
            };
            let labels = if kind.permutes() {
                identical_row_labels(&effective_regressor(design, contrast, opts))
            } else {
                vec![0; n]
            };
            let blocks = if opts.detect_null && kind.permutes() {
                blocks.fixing(&null_rows(design, contrast, opts))
            } else {
                blocks.clone()
            };
            Exchange { kind, labels, blocks }
        })
        .collect()
}

/// randomise's effective regressor of a contrast: --effective_design, or the demeaned design
/// times the contrast. Rows where it is equal are alike for the contrast: relabelings that
/// only exchange them are no new permutation, as randomise counts and enumerates them.
fn effective_regressor(design: &Design, contrast: &Contrast, opts: &AnalysisOptions) -> DMatrix<f64> {
    match &opts.effective_design {
        Some(e) => e.clone(),
        None => {
            let mut m = design.m.clone();
            for mut col in m.column_iter_mut() {
                let mean = col.mean();
                col.add_scalar_mut(-mean);
            }
            m * &contrast.c
        }
    }
}

/// randomise's --detectNull: the rows of the effective regressor whose sum is zero (below
/// 1e-10, randomise's bound) are uninformative for the contrast.
fn null_rows(design: &Design, contrast: &Contrast, opts: &AnalysisOptions) -> Vec<usize> {
    let regressor = effective_regressor(design, contrast, opts);
    (0..regressor.nrows()).filter(|&i| regressor.row(i).sum().abs() < 1e-10).collect()
}

/// The sets of `exchanges`, one per distinct exchange, and each contrast's.
fn distinct_sets(exchanges: &[Exchange]) -> (Vec<&Exchange>, Vec<usize>) {
    let mut unique: Vec<&Exchange> = Vec::new();
    let set_of = exchanges
        .iter()
        .map(|e| match unique.iter().position(|u| *u == e) {
            Some(k) => k,
            None => {
                unique.push(e);
                unique.len() - 1
            }
        })
        .collect();
    (unique, set_of)
}

/// Each contrast's permutation set, refused in one line before anything is built when the
/// sets and the nulls would not fit in the memory available. Each set is announced on
/// stderr.
pub fn plan(design: &Design, models: &[ContrastModel], opts: &AnalysisOptions, n: usize) -> Result<PermutationPlan> {
    let exchanges = exchanges(design, models, opts, n);
    let (unique, set_of) = distinct_sets(&exchanges);
    let plans: Vec<SetPlan> = unique
        .iter()
        .map(|e| SetPlan::new(n, e.kind, &e.labels, &e.blocks, opts.n_perm).map_err(Error::usage))
        .collect::<Result<_>>()?;
    check_memory(design, opts, n, &unique, &plans, &set_of)?;
    let kinds: Vec<PermKind> = exchanges.iter().map(|e| e.kind).collect();
    let mut sets = Vec::new();
    for (k, e) in unique.iter().enumerate() {
        let perms = PermSet::generate_in_blocks(n, e.kind, &e.labels, &e.blocks, opts.n_perm, opts.seed)
            .map_err(Error::usage)?;
        announce(design, opts, &perms, e.kind, &set_of, k, unique.len());
        sets.push(perms);
    }
    Ok(PermutationPlan { kinds, set_of, sets })
}

/// The set on stderr: how many, exhaustive or random, for which contrasts.
fn announce(
    design: &Design,
    opts: &AnalysisOptions,
    perms: &PermSet,
    kind: PermKind,
    set_of: &[usize],
    k: usize,
    nsets: usize,
) {
    let within = match &opts.blocks {
        Some(b) if b.whole => format!(" of {} whole exchangeability blocks", b.len()),
        Some(b) => format!(" within {} exchangeability blocks", b.len()),
        None => String::new(),
    };
    let for_which = if nsets == 1 {
        String::new()
    } else {
        let names: Vec<&str> =
            design.contrasts.iter().zip(set_of).filter(|(_, &s)| s == k).map(|(c, _)| c.name.as_str()).collect();
        format!(" for {}", names.join(", "))
    };
    let merged = if matches!(opts.distribution, Distribution::Merge(_)) { ", merged from the shards" } else { "" };
    let (nperm, what) = (perms.len(), kind.words());
    if perms.exhaustive {
        log::info!("exhaustive: all {nperm} distinct {what}{within}{for_which} (asked for {}){merged}", opts.n_perm);
    } else {
        log::info!("{nperm} random {what}{within}{for_which} (seed {}); {}{merged}", opts.seed, reason_for(kind, opts));
    }
}

/// Refuses a run whose permutation sets and nulls need more memory than /proc/meminfo's
/// MemAvailable (when it can be read), before any of it is allocated.
fn check_memory(
    design: &Design,
    opts: &AnalysisOptions,
    n: usize,
    unique: &[&Exchange],
    plans: &[SetPlan],
    set_of: &[usize],
) -> Result<()> {
    let sets: u64 = unique.iter().zip(plans).map(|(e, p)| p.bytes(n, e.kind)).fold(0, u64::saturating_add);
    let nulls: u64 = design
        .contrasts
        .iter()
        .zip(set_of)
        .map(|(c, &s)| (plans[s].len as u64).saturating_mul(NULL_BYTES * statistics_of(c, opts)))
        .fold(0, u64::saturating_add);
    let need = sets.saturating_add(nulls);
    let Some(available) = mem_available() else { return Ok(()) };
    if need <= available {
        return Ok(());
    }
    let len = plans.iter().map(|p| p.len).max().unwrap_or(0);
    Err(Error::usage(format!(
        "-n {}: {len} permutations would need {} of memory (the permutation set {}, the nulls {}), \
         but {} is available (MemAvailable); ask for fewer with -n",
        opts.n_perm,
        bytes(need),
        bytes(sets),
        bytes(nulls),
        bytes(available)
    )))
}

/// The maximum-statistic nulls a contrast keeps: the voxelwise one, TFCE, cluster extent
/// and mass at the thresholds of its kind.
fn statistics_of(c: &Contrast, opts: &AnalysisOptions) -> u64 {
    let s = &opts.spatial;
    let (extent, mass) = match c.kind {
        StatKind::T => (s.t_extent, s.t_mass),
        StatKind::F => (s.f_extent, s.f_mass),
    };
    1 + s.tfce.is_some() as u64 + extent.is_some() as u64 + mass.is_some() as u64
}

/// MemAvailable from /proc/meminfo, in bytes.
fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb.saturating_mul(1024))
}

/// Bytes in words: "1.6 TB", "512 MB".
fn bytes(b: u64) -> String {
    let units = ["bytes", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut x = b as f64;
    let mut u = 0;
    while x >= 1000.0 && u + 1 < units.len() {
        x /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} bytes")
    } else {
        format!("{x:.1} {}", units[u])
    }
}

/// What randomise's -q and -Q ask: print, then exit without analysing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inquiry {
    /// -q: how many distinct permutations each contrast has.
    Count,
    /// -Q: what randomise_parallel needs to split the run.
    Parallel,
}

/// The answer of `inquiry` for this run, as the lines to print on stdout.
pub fn answer(inquiry: Inquiry, design: &Design, opts: &AnalysisOptions, n: usize, prefix: &str) -> Result<String> {
    match inquiry {
        Inquiry::Count => {
            let models: Vec<ContrastModel> = design
                .contrasts
                .iter()
                .map(|c| ContrastModel::new(&design.m, c).map_err(Error::usage))
                .collect::<Result<_>>()?;
            Ok(counts(design, &models, opts, n))
        }
        Inquiry::Parallel => parallel_facts(design, opts, prefix),
    }
}

/// -q: per contrast, randomise's line (F-tests first, then t contrasts, as randomise runs
/// them): "<count> sign-flips required for exhaustive test of t-test 1". The count is of
/// the distinct transformations voxflip's set would be drawn from.
fn counts(design: &Design, models: &[ContrastModel], opts: &AnalysisOptions, n: usize) -> String {
    let exchanges = exchanges(design, models, opts, n);
    let mut order: Vec<usize> = (0..design.contrasts.len()).collect();
    order.sort_by_key(|&ci| design.contrasts[ci].kind == StatKind::T);
    let mut out = String::new();
    for ci in order {
        let (c, e) = (&design.contrasts[ci], &exchanges[ci]);
        let count = match count_distinct_in_blocks(e.kind, &e.labels, &e.blocks) {
            Some(d) => d.to_string(),
            None => format_g(ln_count_distinct_in_blocks(e.kind, &e.labels, &e.blocks)),
        };
        let what = match e.kind {
            PermKind::SignFlip => {
                out.push_str("One-sample design detected; sign-flipping instead of permuting.\n");
                "sign-flips"
            }
            PermKind::Permute => "permutations",
            PermKind::Both => "sign-flipped permutations",
        };
        let test = match c.kind {
            StatKind::T => "t-test",
            StatKind::F => "f-test",
        };
        let number = c.name.trim_start_matches(|ch: char| ch.is_ascii_alphabetic());
        let _ = writeln!(out, "{count} {what} required for exhaustive test of {test} {number}");
    }
    out
}

/// A count beyond u128 from its logarithm, as C++ streams print a double (randomise's
/// format): six significant digits, e.g. "1.60694e+60".
fn format_g(ln: f64) -> String {
    let log10 = ln / std::f64::consts::LN_10;
    let mut exp = log10.floor();
    let mut mantissa = 10f64.powf(log10 - exp);
    if format!("{mantissa:.5}").starts_with("10") {
        mantissa /= 10.0;
        exp += 1.0;
    }
    let digits = format!("{mantissa:.5}");
    let digits = digits.trim_end_matches('0').trim_end_matches('.');
    format!("{digits}e+{exp:02}")
}

/// -Q: randomise's line for its parallel mode: the permutations, the contrasts to run (1
/// with --skipTo), the output prefix and the permutations per job (300; 100 with TFCE).
fn parallel_facts(design: &Design, opts: &AnalysisOptions, prefix: &str) -> Result<String> {
    if opts.n_perm == 0 {
        return Err(Error::usage(
            "-Q (parallel mode) needs a number of permutations: -n 0 is not allowed, as in randomise",
        ));
    }
    let per_job = if opts.spatial.tfce.is_some() { 100 } else { 300 };
    Ok(format!("{} {} {prefix} {per_job}\n", opts.n_perm, design.contrasts.len()))
}

/// randomise's -P file ({prefix}_perm_tstat1.txt): one line per permutation of the set, in
/// the set's order (the identity first), N numbers separated by spaces. Sign flips: the
/// sign (1 or -1) of each image; relabelings: for each image m, the 1-based row of the
/// design that goes with it (randomise's design row m is its row src[m]); both: that row,
/// negative when image m is negated.
pub fn vectors_text(perms: &PermSet) -> String {
    let mut out = String::with_capacity(perms.len() * perms.n * 3);
    for j in 0..perms.len() {
        for m in 0..perms.n {
            let sign = if perms.negated(j, m) { "-" } else { "" };
            let sep = if m == 0 { "" } else { " " };
            let _ = match perms.kind {
                PermKind::SignFlip => write!(out, "{sep}{sign}1"),
                PermKind::Permute | PermKind::Both => write!(out, "{sep}{sign}{}", perms.source(j, m) + 1),
            };
        }
        out.push('\n');
    }
    out
}

/// --effective_design: the matrix whose identical rows say which permutations are distinct
/// (randomise: "alternative design for determining valid permutations"), one row per image.
pub fn effective_design(v: &voxflip_io::Vest, path: &std::path::Path, n: usize) -> Result<DMatrix<f64>> {
    if v.rows.len() != n {
        return Err(Error::input(
            path,
            format!(
                "{} rows, but the input has {n} volumes (--effective_design needs one row per volume)",
                v.rows.len()
            ),
        ));
    }
    Ok(DMatrix::from_fn(n, v.ncols, |i, k| v.rows[i][k]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_counts_print_as_randomise_prints_a_double() {
        // 2^200 = 1.60693804...e60; 10^6 exactly; 2^20 = 1048576.
        assert_eq!(format_g(200.0 * std::f64::consts::LN_2), "1.60694e+60");
        assert_eq!(format_g(6.0 * std::f64::consts::LN_10), "1e+06");
        assert_eq!(format_g(20.0 * std::f64::consts::LN_2), "1.04858e+06");
    }

    #[test]
    fn sizes_read_in_words() {
        assert_eq!(bytes(999), "999 bytes");
        assert_eq!(bytes(1_600_000_000_000), "1.6 TB");
    }
}
