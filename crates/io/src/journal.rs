//! How an output set is committed so that a user never finds a complete-looking set that
//! is not one, and the journal that lets the next run finish a commit a SIGKILL cut short.
//!
//! A set has a marker, the file renamed last (a run's sidecar `{prefix}_voxflip.json`): its
//! presence says "every file I list is this run's". The commit:
//! 1. writes the journal `.voxflip-{pid}-{marker}.journal` (every temporary and its final
//!    name, the marker last, then `end`), fsynced with its directory;
//! 2. removes the marker of an earlier run with the same name, before any final file of
//!    this run appears, so a mixed set never carries a marker;
//! 3. renames the other files, syncs the directory, renames the marker, syncs again;
//! 4. removes the journal.
//!
//! A run killed between 1 and 4 leaves its journal and the temporaries not yet renamed; the
//! next run with a prefix in that directory ([`crate::temps::clean_up_after_dead_runs`])
//! rolls the commit forward: steps 2 to 4 again, for the files still under temporary names.
//! A journal without its `end` (killed while writing it) commits nothing: the earlier set is
//! still whole, and the temporaries are removed as stale.
use crate::error::{io_msg, Error, Result};
use crate::temps::{dir_of, sync_dir, temp_name};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The journal files' suffix.
pub(crate) const SUFFIX: &str = ".journal";
const HEADER: &str = "voxflip commit journal 1";
const END: &str = "end";

/// One output under its temporary name and the final name it gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rename {
    pub tmp: PathBuf,
    pub fin: PathBuf,
}

/// The journal of the commit whose marker is `marker`.
fn journal_path(marker: &Path) -> PathBuf {
    let mut p = temp_name(marker).into_os_string();
    p.push(SUFFIX);
    PathBuf::from(p)
}

/// A path as the journal in `dir` records it: the file name when it is in `dir`, else the
/// absolute path. None when it cannot be written on one line.
fn recorded(path: &Path, dir: &Path) -> Option<String> {
    let s = if dir_of(path) == dir {
        path.file_name()?.to_string_lossy().into_owned()
    } else {
        std::path::absolute(path).ok()?.to_string_lossy().into_owned()
    };
    (!s.contains(['\t', '\n', '\r'])).then_some(s)
}

/// The journal's text, or None when a name cannot be recorded.
fn journal_text(renames: &[Rename], dir: &Path) -> Option<String> {
    let mut t = format!("{HEADER}\n");
    for r in renames {
        t.push_str(&format!("{}\t{}\n", recorded(&r.tmp, dir)?, recorded(&r.fin, dir)?));
    }
    t.push_str(END);
    t.push('\n');
    Some(t)
}

/// The renames a complete journal records (None: torn or not a journal).
fn parse(text: &str, dir: &Path) -> Option<Vec<Rename>> {
    let mut lines = text.lines();
    if lines.next()? != HEADER {
        return None;
    }
    let mut renames = Vec::new();
    for line in lines {
        if line == END {
            return (!renames.is_empty()).then_some(renames);
        }
        let (tmp, fin) = line.split_once('\t')?;
        renames.push(Rename { tmp: dir.join(tmp), fin: dir.join(fin) });
    }
    None
}

/// Write `text` to `path` and make it durable (file and directory). Called with the
/// temporaries' lock held (by the commit), so it creates the file itself.
fn write_synced(path: &Path, text: &str) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    sync_dir(dir_of(path));
    Ok(())
}

/// Remove a file that may not exist.
fn remove_if_there(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Steps 2 and 3 of the commit: the old marker out, then every file whose temporary is
/// still there renamed, the marker last. `pause`: a wait between renames (tests only, to
/// make the window wide enough to be hit by a kill).
fn rename_all(renames: &[Rename], pause: Option<Duration>) -> Result<()> {
    let (marker, rest) = renames.split_last().expect("a set has its marker");
    remove_if_there(&marker.fin)
        .map_err(|e| Error::output(&marker.fin, format!("cannot remove the earlier run's ({})", io_msg(&e))))?;
    let rename = |r: &Rename| {
        std::fs::rename(&r.tmp, &r.fin)
            .map_err(|e| Error::output(&r.fin, format!("cannot rename from {}: {}", r.tmp.display(), io_msg(&e))))
    };
    for r in rest {
        if let Some(p) = pause {
            std::thread::sleep(p);
        }
        if r.tmp.exists() {
            rename(r)?;
        }
    }
    sync_dir(dir_of(&marker.fin));
    rename(marker)?;
    sync_dir(dir_of(&marker.fin));
    Ok(())
}

/// Commit `renames` (the marker last) as the module documentation describes. The caller
/// holds the temporaries' lock, so an interrupt waits for the end. On an error, the
/// temporaries not yet renamed are removed, and the marker is not in place.
pub(crate) fn commit(renames: &[Rename], pause: Option<Duration>) -> Result<()> {
    let marker = &renames.last().expect("a set has its marker").fin;
    let journal = journal_path(marker);
    let dir = dir_of(&journal).to_path_buf();
    // A name that cannot be journalled is committed in the same order, without a journal.
    if let Some(text) = journal_text(renames, &dir) {
        write_synced(&journal, &text).map_err(|e| Error::output(&journal, io_msg(&e)))?;
    }
    let done = rename_all(renames, pause);
    if done.is_err() {
        renames.iter().for_each(|r| drop(std::fs::remove_file(&r.tmp)));
    }
    let _ = std::fs::remove_file(&journal);
    done
}

/// Finish the commit a dead run's `journal` records: the marker's final path when the set
/// is now complete. A torn journal, or one whose files are gone, commits nothing (the
/// temporaries left are stale and removed by the caller). The journal is removed.
pub(crate) fn roll_forward(journal: &Path) -> Option<PathBuf> {
    let dir = dir_of(journal).to_path_buf();
    let renames = std::fs::read_to_string(journal).ok().and_then(|t| parse(&t, &dir));
    let finished = renames.and_then(|renames| {
        let marker = renames.last()?.clone();
        // Every file either still under its temporary name or already renamed.
        let whole = marker.tmp.exists() && renames.iter().all(|r| r.tmp.exists() || r.fin.exists());
        (whole && rename_all(&renames, None).is_ok()).then_some(marker.fin)
    });
    let _ = std::fs::remove_file(journal);
    finished
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    /// The journal's text round-trips, relative names within its directory and absolute
    /// names elsewhere; a journal without its end is torn and names nothing.
    #[test]
    fn journal_round_trips_and_torn_journals_name_nothing() {
        let d = voxflip_testkit::tempdir().unwrap();
        let other = voxflip_testkit::tempdir().unwrap();
        let renames = vec![
            Rename { tmp: d.path().join(".voxflip-1-a"), fin: d.path().join("a") },
            Rename { tmp: other.path().join(".voxflip-1-b"), fin: other.path().join("b") },
            Rename { tmp: d.path().join(".voxflip-1-m"), fin: d.path().join("m") },
        ];
        let text = journal_text(&renames, d.path()).unwrap();
        assert!(text.starts_with(&format!("{HEADER}\n.voxflip-1-a\ta\n/")), "{text}");
        assert_eq!(parse(&text, d.path()).unwrap(), renames);
        let torn = text.trim_end().strip_suffix(END).unwrap();
        assert_eq!(parse(torn, d.path()), None);
        assert_eq!(parse("", d.path()), None);
        let bad = Rename { tmp: d.path().join("x\ty"), fin: d.path().join("y") };
        assert_eq!(journal_text(&[bad], d.path()), None);
    }

    /// A commit killed after k of its renames (simulated: the journal written, the earlier
    /// marker removed, k files renamed) is finished by roll_forward whatever k is, and the
    /// result is the same files as an uninterrupted commit.
    #[test]
    fn a_commit_cut_after_any_rename_rolls_forward_to_the_whole_set() {
        for k in 0..=3 {
            let d = voxflip_testkit::tempdir().unwrap();
            let p = |n: &str| d.path().join(n);
            for n in ["a", "b", "m"] {
                std::fs::write(p(n), "old").unwrap();
            }
            let renames: Vec<Rename> =
                ["a", "b", "m"].iter().map(|n| Rename { tmp: p(&format!(".voxflip-1-{n}")), fin: p(n) }).collect();
            for r in &renames {
                std::fs::write(&r.tmp, "new").unwrap();
            }
            let journal = p(&format!(".voxflip-1-m{SUFFIX}"));
            std::fs::write(&journal, journal_text(&renames, d.path()).unwrap()).unwrap();
            std::fs::remove_file(p("m")).unwrap();
            for r in &renames[..k.min(2)] {
                std::fs::rename(&r.tmp, &r.fin).unwrap();
            }
            if k == 3 {
                std::fs::rename(&renames[2].tmp, &renames[2].fin).unwrap();
            }
            let done = roll_forward(&journal);
            assert_eq!(done, (k < 3).then(|| p("m")), "k = {k}");
            assert_eq!(names(d.path()), vec!["a", "b", "m"], "k = {k}");
            for n in ["a", "b", "m"] {
                assert_eq!(std::fs::read_to_string(p(n)).unwrap(), "new", "{n}, k = {k}");
            }
        }
    }

    /// A torn journal commits nothing: the earlier set, marker included, stays as it was.
    #[test]
    fn a_torn_journal_leaves_the_earlier_set_whole() {
        let d = voxflip_testkit::tempdir().unwrap();
        let p = |n: &str| d.path().join(n);
        std::fs::write(p("a"), "old").unwrap();
        std::fs::write(p("m"), "old").unwrap();
        std::fs::write(p(".voxflip-1-a"), "new").unwrap();
        std::fs::write(p(".voxflip-1-m"), "new").unwrap();
        let journal = p(&format!(".voxflip-1-m{SUFFIX}"));
        std::fs::write(&journal, format!("{HEADER}\n.voxflip-1-a\ta\n")).unwrap();
        assert_eq!(roll_forward(&journal), None);
        assert_eq!(std::fs::read_to_string(p("m")).unwrap(), "old");
        assert_eq!(std::fs::read_to_string(p("a")).unwrap(), "old");
        assert!(!journal.exists());
    }
}
