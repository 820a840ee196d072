//! A run's permutation state: what the permutations of a shard, or of a run up to a
//! checkpoint, produced per contrast (the observed maps, the nulls in permutation order and
//! the exceedance counts), with the identity of the run that produced it.
//!
//! The permutation set is one seeded set whatever the split, and the nulls of consecutive
//! ranges of it appended are the nulls of their union; exceedance counts add. So shards
//! merge, and a checkpointed run resumes, into exactly the state of one uninterrupted run.
use crate::error::{Error, Result};
use crate::options::AnalysisOptions;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::ops::Range;
use std::path::{Path, PathBuf};
use voxflip_engines::ContrastNulls;
use voxflip_io::{Dataset, StateArray, StateFile};
use voxflip_stats::spatial::SpatialNull;
use voxflip_stats::Design;

/// Slice `index` (from 1) of `count` of a run's permutation set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The whole set (a single run).
    pub const WHOLE: Shard = Shard { index: 1, count: 1 };

    /// `K/N` as given to --shard.
    pub fn parse(s: &str) -> std::result::Result<Shard, String> {
        let bad = || format!("'{s}': expected K/N with 1 <= K <= N (e.g. --shard 2/8)");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (k.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if index == 0 || index > count || count > 100_000 {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// This shard's permutations of a set of `nperm`: contiguous, and the shards of one
    /// count cover the set exactly once (the identity, permutation 0, is in shard 1).
    pub fn range(&self, nperm: usize) -> Range<usize> {
        let at = |k: usize| (nperm as u128 * k as u128 / self.count as u128) as usize;
        at(self.index - 1)..at(self.index)
    }

    /// `{prefix}_shard-K-of-N`, where this shard's state is written.
    pub fn file(&self, prefix: &str) -> PathBuf {
        PathBuf::from(format!("{prefix}_shard-{}-of-{}", self.index, self.count))
    }
}

/// Where a run's checkpoint lives: beside its shard file (a single run is shard 1 of 1).
pub fn checkpoint_file(prefix: &str, shard: Shard) -> PathBuf {
    if shard == Shard::WHOLE {
        PathBuf::from(format!("{prefix}_checkpoint"))
    } else {
        PathBuf::from(format!("{}.checkpoint", shard.file(prefix).display()))
    }
}

/// One contrast's state over the permutations `range`.
#[derive(Clone, Debug, PartialEq)]
pub struct ContrastState {
    pub name: String,
    pub range: Range<usize>,
    /// Seconds spent on these permutations (and the observed maps).
    pub seconds: f64,
    pub observed: Vec<f32>,
    /// The observed TFCE map (empty without TFCE).
    pub tfce_observed: Vec<f32>,
    pub nulls: ContrastNulls,
}

/// A shard's (or a checkpoint's) state: every contrast done, and the one in progress.
#[derive(Clone, Debug, PartialEq)]
pub struct NullState {
    /// [`identity`] of the run.
    pub identity: String,
    pub shard: Shard,
    pub command_line: Vec<String>,
    pub backend: String,
    pub spatial_backend: Option<String>,
    pub contrasts: Vec<ContrastState>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    voxflip_version: String,
    identity: String,
    shard: Shard,
    command_line: Vec<String>,
    backend: String,
    spatial_backend: Option<String>,
    contrasts: Vec<ContrastHeader>,
}

#[derive(Serialize, Deserialize)]
struct ContrastHeader {
    name: String,
    start: usize,
    end: usize,
    seconds: f64,
}

const FORMAT: &str = "voxflip null state";
/// Arrays per contrast in the file, in this order: observed, TFCE observed, max-statistic
/// null, exceedance counts, TFCE null, TFCE counts, extent null, mass null.
const ARRAYS_PER_CONTRAST: usize = 8;

impl NullState {
    pub fn write(&self, path: &Path) -> Result<()> {
        Ok(voxflip_io::write_state(path, &self.to_file())?)
    }

    pub fn read(path: &Path) -> Result<NullState> {
        let file = voxflip_io::read_state(path)?;
        NullState::from_file(file).map_err(|m| Error::input(path, m))
    }

    fn to_file(&self) -> StateFile {
        let header = Header {
            format: FORMAT.into(),
            voxflip_version: env!("CARGO_PKG_VERSION").into(),
            identity: self.identity.clone(),
            shard: self.shard,
            command_line: self.command_line.clone(),
            backend: self.backend.clone(),
            spatial_backend: self.spatial_backend.clone(),
            contrasts: self
                .contrasts
                .iter()
                .map(|c| ContrastHeader {
                    name: c.name.clone(),
                    start: c.range.start,
                    end: c.range.end,
                    seconds: c.seconds,
                })
                .collect(),
        };
        let mut arrays = Vec::with_capacity(ARRAYS_PER_CONTRAST * self.contrasts.len());
        for c in &self.contrasts {
            let s = &c.nulls.spatial;
            arrays.extend([
                StateArray::F32(c.observed.clone()),
                StateArray::F32(c.tfce_observed.clone()),
                StateArray::F32(c.nulls.max_stat.clone()),
                StateArray::U32(c.nulls.counts.clone()),
                StateArray::F32(s.tfce_max.clone()),
                StateArray::U32(s.tfce_counts.clone()),
                StateArray::F32(s.extent_max.clone()),
                StateArray::F32(s.mass_max.clone()),
            ]);
        }
        StateFile { header: serde_json::to_string(&header).expect("plain data serialises"), arrays }
    }

    fn from_file(file: StateFile) -> std::result::Result<NullState, String> {
        let h: Header = serde_json::from_str(&file.header).map_err(|e| format!("null-state header: {e}"))?;
        if h.format != FORMAT {
            return Err(format!("null-state header: format '{}'", h.format));
        }
        if h.voxflip_version != env!("CARGO_PKG_VERSION") {
            return Err(format!(
                "written by voxflip {}; this is voxflip {}: rerun it with this version",
                h.voxflip_version,
                env!("CARGO_PKG_VERSION")
            ));
        }
        if file.arrays.len() != ARRAYS_PER_CONTRAST * h.contrasts.len() {
            return Err(format!("{} arrays for {} contrasts", file.arrays.len(), h.contrasts.len()));
        }
        let mut arrays = file.arrays.into_iter();
        let mut next = || arrays.next().ok_or_else(|| "missing array".to_string());
        let mut contrasts = Vec::with_capacity(h.contrasts.len());
        for c in h.contrasts {
            let [observed, tfce_observed, max_stat] = [f32s(next()?)?, f32s(next()?)?, f32s(next()?)?];
            let counts = u32s(next()?)?;
            let tfce_max = f32s(next()?)?;
            let tfce_counts = u32s(next()?)?;
            let [extent_max, mass_max] = [f32s(next()?)?, f32s(next()?)?];
            if c.start > c.end || max_stat.len() != c.end - c.start || counts.len() != observed.len() {
                return Err(format!(
                    "contrast {}: its arrays do not match permutations {}..{}",
                    c.name, c.start, c.end
                ));
            }
            contrasts.push(ContrastState {
                name: c.name,
                range: c.start..c.end,
                seconds: c.seconds,
                observed,
                tfce_observed,
                nulls: ContrastNulls {
                    max_stat,
                    counts,
                    spatial: SpatialNull { tfce_max, tfce_counts, extent_max, mass_max },
                },
            });
        }
        Ok(NullState {
            identity: h.identity,
            shard: h.shard,
            command_line: h.command_line,
            backend: h.backend,
            spatial_backend: h.spatial_backend,
            contrasts,
        })
    }
}

fn f32s(a: StateArray) -> std::result::Result<Vec<f32>, String> {
    match a {
        StateArray::F32(v) => Ok(v),
        StateArray::U32(_) => Err("an integer array where floats belong".into()),
    }
}

fn u32s(a: StateArray) -> std::result::Result<Vec<u32>, String> {
    match a {
        StateArray::U32(v) => Ok(v),
        StateArray::F32(_) => Err("a float array where integers belong".into()),
    }
}

/// The identity of a run: a SHA-256 over everything that defines its permutation results
/// (the data and mask, the design and contrasts, the permutation and spatial options, the
/// seed and voxflip's version), and over nothing that only changes how they are written
/// (the p convention, which maps) or where they are computed (the engine). Shards merge
/// only when they share it; a checkpoint resumes only into a run that has it.
pub fn identity(ds: &Dataset, design: &Design, opts: &AnalysisOptions) -> String {
    let mut h = Sha256::new();
    let mut put = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    put(env!("CARGO_PKG_VERSION").as_bytes());
    put(format!("{:?} {} {} {:?}", ds.dims, ds.n, ds.v, ds.affine).as_bytes());
    put(&ds.voxels.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
    // The data in pieces, to keep the copy small.
    for chunk in ds.y.chunks(1 << 16) {
        put(&chunk.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
    }
    if let Some(evs) = &opts.voxelwise {
        // Only with --vxl, so that the identity of every other run stays what it was.
        put(format!("vxl {:?}", evs.columns).as_bytes());
        for chunk in evs.values.iter().flat_map(|vals| vals.chunks(1 << 16)) {
            put(&chunk.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
        }
    }
    put(format!("{} {}", design.m.nrows(), design.m.ncols()).as_bytes());
    put(&design.m.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
    for c in &design.contrasts {
        put(format!("{} {:?} {} {}", c.name, c.kind, c.c.nrows(), c.c.ncols()).as_bytes());
        put(&c.c.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
    }
    put(format!(
        "n_perm {} seed {} kind {:?} flip_constant {} blocks {:?} spatial {:?} effective {:?} detect_null {} confound {:?}",
        opts.n_perm,
        opts.seed,
        opts.perm_kind,
        opts.flip_constant_contrasts,
        opts.blocks,
        opts.spatial,
        opts.effective_design.as_ref().map(|e| e.as_slice()),
        opts.detect_null,
        opts.confound
    )
    .as_bytes());
    // Only when set, so that the identity of runs without it is unchanged.
    if let Some(sigma) = opts.variance_smoothing {
        put(format!("variance_smoothing {sigma}").as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A shard that took part in a merge, as the sidecar records it.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ShardRecord {
    pub file: PathBuf,
    pub index: usize,
    pub count: usize,
    pub backend: String,
    pub seconds: f64,
}

/// The shards of one run merged into the state of the whole run.
#[derive(Clone, Debug)]
pub struct Merged {
    pub state: NullState,
    pub shards: Vec<ShardRecord>,
}

/// The shard files of `prefix`: every `{prefix}_shard-K-of-N` in its directory, by K.
pub fn find_shards(prefix: &str) -> Result<Vec<PathBuf>> {
    let p = Path::new(prefix);
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let base = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = format!("{base}_shard-");
    let entries = std::fs::read_dir(dir).map_err(|e| Error::input(dir, voxflip_io::io_msg(&e)))?;
    let mut found: Vec<(usize, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let shard = parse_shard_name(name.strip_prefix(&stem)?)?;
            Some((shard.index, dir.join(name)))
        })
        .collect();
    if found.is_empty() {
        return Err(Error::usage(format!(
            "no shard files {prefix}_shard-K-of-N: run with --shard K/N first (or name the shard files)"
        )));
    }
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// `K-of-N` (the end of a shard file's name).
fn parse_shard_name(s: &str) -> Option<Shard> {
    let (k, n) = s.split_once("-of-")?;
    let (index, count) = (k.parse().ok()?, n.parse().ok()?);
    (index >= 1 && index <= count).then_some(Shard { index, count })
}

/// The file a missing shard should be in, named after `sibling` (another shard's file).
fn sibling_name(sibling: &Path, shard: Shard) -> PathBuf {
    let name = sibling.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let base = name.rfind("_shard-").map(|i| &name[..i]).unwrap_or(&name);
    sibling.with_file_name(shard.file(base).file_name().expect("a file name"))
}

/// Merge the shards in `files`: they must be one run's (one identity, one count), all
/// present, none twice. The nulls are appended in shard order and the counts summed, which
/// gives exactly the state of a single run.
pub fn merge(files: &[PathBuf]) -> Result<Merged> {
    let mut shards: Vec<(PathBuf, NullState)> = Vec::with_capacity(files.len());
    for f in files {
        shards.push((f.clone(), NullState::read(f)?));
    }
    let Some((first_path, first)) = shards.first() else {
        return Err(Error::usage("merge: no shard files given"));
    };
    let (identity, count) = (first.identity.clone(), first.shard.count);
    for (path, s) in &shards {
        if s.identity != identity {
            return Err(Error::input(
                path,
                format!(
                    "a shard of another run than {} (identity {} vs {}): the inputs, design, options, seed or version differ",
                    first_path.display(),
                    &s.identity[..12.min(s.identity.len())],
                    &identity[..12.min(identity.len())]
                ),
            ));
        }
        if s.shard.count != count {
            return Err(Error::input(
                path,
                format!("shard {} of {}, but {} is one of {count}", s.shard.index, s.shard.count, first_path.display()),
            ));
        }
    }
    let mut by_index: Vec<Option<usize>> = vec![None; count];
    for (i, (path, s)) in shards.iter().enumerate() {
        if let Some(j) = by_index[s.shard.index - 1] {
            return Err(Error::input(
                path,
                format!("shard {} of {count} again (also in {})", s.shard.index, shards[j].0.display()),
            ));
        }
        by_index[s.shard.index - 1] = Some(i);
    }
    if let Some(k) = by_index.iter().position(|i| i.is_none()) {
        let missing = sibling_name(first_path, Shard { index: k + 1, count });
        return Err(Error::input(
            &missing,
            format!("shard {} of {count} is missing: rerun it with --shard {}/{count}", k + 1, k + 1),
        ));
    }
    let order: Vec<usize> = by_index.into_iter().map(|i| i.expect("all present")).collect();
    let records = order
        .iter()
        .map(|&i| {
            let (path, s) = &shards[i];
            ShardRecord {
                file: path.clone(),
                index: s.shard.index,
                count,
                backend: s.backend.clone(),
                seconds: s.contrasts.iter().map(|c| c.seconds).sum(),
            }
        })
        .collect();
    // The shards by index, each taken once: their nulls move into the merged state.
    let mut slots: Vec<Option<(PathBuf, NullState)>> = shards.into_iter().map(Some).collect();
    let mut in_order = order.iter().map(|&i| slots[i].take().expect("each shard once"));
    let (head_path, mut state) = in_order.next().expect("at least one shard");
    state.shard = Shard::WHOLE;
    let mut backends = vec![state.backend.clone()];
    for (path, s) in in_order {
        if s.contrasts.len() != state.contrasts.len() {
            return Err(Error::input(path, "holds another number of contrasts than the first shard"));
        }
        if !backends.contains(&s.backend) {
            backends.push(s.backend);
        }
        for (acc, c) in state.contrasts.iter_mut().zip(s.contrasts) {
            if c.name != acc.name || c.range.start != acc.range.end {
                return Err(Error::input(
                    path,
                    format!(
                        "{}: permutations {}..{} do not follow {}..{} of the shards before it",
                        c.name, c.range.start, c.range.end, acc.range.start, acc.range.end
                    ),
                ));
            }
            if c.observed != acc.observed || c.tfce_observed != acc.tfce_observed {
                log::warn!(
                    "{}: {}'s observed map differs from {}'s in rounding (another engine?); the merge uses {}'s",
                    c.name,
                    path.display(),
                    head_path.display(),
                    head_path.display()
                );
            }
            acc.nulls.append(c.nulls);
            acc.range.end = c.range.end;
            acc.seconds += c.seconds;
        }
    }
    state.backend = backends.join("; ");
    Ok(Merged { state, shards: records })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_set_once_in_order() {
        for nperm in [0, 1, 2, 5, 999, 1000, 10_007] {
            for count in [1, 2, 3, 7, 64] {
                let mut next = 0;
                for index in 1..=count {
                    let r = Shard { index, count }.range(nperm);
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, nperm);
            }
        }
        assert_eq!(Shard { index: 1, count: 3 }.range(10), 0..3);
    }

    #[test]
    fn shard_flags_and_names_parse() {
        assert_eq!(Shard::parse("2/8"), Ok(Shard { index: 2, count: 8 }));
        for bad in ["0/3", "4/3", "3", "a/b", "1/0", "-1/2", ""] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_shard_name("3-of-4"), Some(Shard { index: 3, count: 4 }));
        assert_eq!(parse_shard_name("5-of-4"), None);
        assert_eq!(parse_shard_name("3-of-4.checkpoint"), None);
        let p = sibling_name(Path::new("d/out_shard-1-of-4"), Shard { index: 3, count: 4 });
        assert_eq!(p, Path::new("d/out_shard-3-of-4"));
    }

    fn state(shard: Shard, range: Range<usize>, seed: u32) -> NullState {
        let v = 3;
        let nulls = ContrastNulls {
            max_stat: range.clone().map(|j| j as f32 + 0.5).collect(),
            counts: (0..v).map(|i| i as u32 * seed).collect(),
            spatial: SpatialNull {
                tfce_max: range.clone().map(|j| j as f32).collect(),
                tfce_counts: vec![seed; v],
                extent_max: vec![],
                mass_max: vec![],
            },
        };
        NullState {
            identity: "abc".into(),
            shard,
            command_line: vec!["voxflip".into()],
            backend: "cpu".into(),
            spatial_backend: None,
            contrasts: vec![ContrastState {
                name: "tstat1".into(),
                range,
                seconds: 1.0,
                observed: vec![1.0, 2.0, 3.0],
                tfce_observed: vec![4.0, 5.0, 6.0],
                nulls,
            }],
        }
    }

    #[test]
    fn state_files_round_trip_and_merge_in_order() {
        let dir = voxflip_testkit::tempdir().unwrap();
        let prefix = dir.path().join("out").display().to_string();
        let paths: Vec<PathBuf> = (1..=3)
            .map(|k| {
                let s = Shard { index: k, count: 3 };
                let st = state(s, s.range(10), k as u32);
                let p = s.file(&prefix);
                st.write(&p).unwrap();
                assert_eq!(NullState::read(&p).unwrap(), st);
                p
            })
            .collect();
        // Given in any order (found by name here), merged by shard index.
        let found = find_shards(&prefix).unwrap();
        assert_eq!(found, paths);
        let m = merge(&[paths[2].clone(), paths[0].clone(), paths[1].clone()]).unwrap();
        let c = &m.state.contrasts[0];
        assert_eq!(c.range, 0..10);
        assert_eq!(c.nulls.max_stat, (0..10).map(|j| j as f32 + 0.5).collect::<Vec<_>>());
        assert_eq!(c.nulls.counts, vec![0, 6, 12]);
        assert_eq!(c.nulls.spatial.tfce_counts, vec![6, 6, 6]);
        assert_eq!(c.seconds, 3.0);
        // Missing, duplicated and foreign shards are refused, naming the file.
        let e = merge(&paths[..2]).unwrap_err().to_string();
        assert!(e.contains("out_shard-3-of-3") && e.contains("missing"), "{e}");
        let e = merge(&[paths[0].clone(), paths[1].clone(), paths[1].clone()]).unwrap_err().to_string();
        assert!(e.contains("again"), "{e}");
        let mut foreign = state(Shard { index: 3, count: 3 }, 6..10, 3);
        foreign.identity = "def".into();
        let fp = dir.path().join("other_shard-3-of-3");
        foreign.write(&fp).unwrap();
        let e = merge(&[paths[0].clone(), paths[1].clone(), fp.clone()]).unwrap_err().to_string();
        assert!(e.starts_with(&fp.display().to_string()) && e.contains("another run"), "{e}");
    }
}
