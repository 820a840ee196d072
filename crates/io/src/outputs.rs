//! A set of output files written under temporary names and renamed together at the end,
//! so a failed or interrupted run leaves nothing partial behind.
//!
//! Each output is written to a hidden temporary file in the same directory as its final
//! name (same directory, so the rename is atomic on one filesystem), named
//! `.voxflip-{pid}-{final name}` ([`crate::temps`]): the pid keeps concurrent runs apart and
//! tells a later run whether its writer is still alive, and the extension stays last
//! because the NIfTI writer picks compression from it. Temporaries are fsynced once
//! written. `commit` renames them all; dropping an uncommitted set (an error, a panic
//! unwinding) deletes the temporaries.
//!
//! A set with a marker ([`OutputSet::write_marker`], a run's sidecar) is committed through
//! a journal ([`crate::journal`]): the earlier marker goes first, the marker comes last, and
//! a commit cut short by a kill is finished by the next run. An interrupt waits for a commit
//! under way ([`crate::temps::abandon`]).
//!
//! Images can also be written in the background ([`OutputSet::write_image_later`]): each
//! is compressed and written on rayon's pool while the caller goes on (the next contrast's
//! permutations), several at once; `commit` waits for them and commits nothing if one
//! failed. The files are the same bytes as written directly.
use crate::error::{Error, Result};
use crate::journal::Rename;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Outputs pending under temporary names. See the module documentation.
#[derive(Debug, Default)]
pub struct OutputSet {
    /// Outputs not yet renamed, in the order they were first requested.
    pending: Vec<Rename>,
    /// The final path of the file renamed last, as the mark of a complete set.
    marker: Option<PathBuf>,
    /// Tests: a wait between the commit's renames, to widen the window a kill can hit.
    pause: Option<Duration>,
    /// Background writes not yet finished, and the first of their errors.
    background: Arc<Background>,
}

/// Writes running on rayon's pool: how many, and the first error.
#[derive(Debug, Default)]
struct Background {
    state: Mutex<(usize, Option<Error>)>,
    finished: Condvar,
}

impl Background {
    fn start(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0 += 1;
    }

    fn end(&self, result: Result<()>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0 -= 1;
        if let Err(e) = result {
            st.1.get_or_insert(e);
        }
        self.finished.notify_all();
    }

    /// Wait until every background write has finished; the first error, if any. On one of
    /// rayon's threads (where the writes may be queued behind the caller) the waiting thread
    /// runs queued work itself, so a one-thread pool cannot deadlock.
    fn wait(&self) -> Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while st.0 > 0 {
            if rayon::current_thread_index().is_some() {
                drop(st);
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            } else {
                st = self.finished.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        }
        st.1.take().map_or(Ok(()), Err)
    }
}

impl OutputSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Check, before any work is done, that the directory an output prefix points into
    /// exists and is writable. See [`check_dir`].
    pub fn check_dir(prefix_path: &Path) -> Result<()> {
        check_dir(prefix_path)
    }

    /// Final paths of everything written so far (for the provenance record).
    pub fn planned(&self) -> Vec<PathBuf> {
        self.pending.iter().map(|r| r.fin.clone()).collect()
    }

    /// Tests only: wait this long before each rename of the commit (the kill tests use it to
    /// land signals inside the renames).
    pub fn pause_between_renames(&mut self, pause: Duration) {
        self.pause = Some(pause);
    }

    /// The temporary path for `final_path`, registering it for `commit`/cleanup. Asking
    /// twice for the same final path returns the same temporary.
    pub fn temp_for(&mut self, final_path: &Path) -> PathBuf {
        if let Some(r) = self.pending.iter().find(|r| r.fin == final_path) {
            return r.tmp.clone();
        }
        let tmp = crate::temps::temp_name(final_path);
        self.pending.push(Rename { tmp: tmp.clone(), fin: final_path.to_path_buf() });
        tmp
    }

    /// Write a text output (a table, provenance JSON, a report) under its temporary name.
    pub fn write_text(&mut self, final_path: &Path, text: &str) -> Result<()> {
        let tmp = self.temp_for(final_path);
        let write = || {
            let mut f = crate::temps::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_data()
        };
        write().map_err(|e| Error::output(final_path, crate::io_msg(&e)))
    }

    /// Write the set's marker, renamed after everything else (see the module documentation);
    /// its earlier version is removed before any other file of the set is renamed.
    pub fn write_marker(&mut self, final_path: &Path, text: &str) -> Result<()> {
        self.write_text(final_path, text)?;
        self.marker = Some(final_path.to_path_buf());
        Ok(())
    }

    /// Write a 3D float32 map (see [`crate::nifti::write_map`]) under its temporary name.
    pub fn write_map(
        &mut self,
        final_path: &Path,
        reference: &crate::Header,
        dims: [usize; 3],
        data: &[f32],
    ) -> Result<()> {
        self.write_image(final_path, reference, dims, 1, data)
    }

    /// Write a 3D or 4D float32 image (see [`crate::nifti::write_image`]) under its
    /// temporary name.
    pub fn write_image(
        &mut self,
        final_path: &Path,
        reference: &crate::Header,
        dims: [usize; 3],
        nvol: usize,
        data: &[f32],
    ) -> Result<()> {
        let tmp = self.temp_for(final_path);
        crate::nifti::write_temporary(&tmp, reference, dims, nvol, data).map_err(|e| match e {
            // Name the file the user asked for, not the hidden temporary.
            Error::Output { msg, .. } => Error::output(final_path, msg),
            other => other,
        })
    }

    /// Write a 3D or 4D float32 image like [`OutputSet::write_image`], but in the background
    /// on rayon's pool: this returns at once, and [`OutputSet::commit`] (or
    /// [`OutputSet::wait`]) reports a failure.
    pub fn write_image_later(
        &mut self,
        final_path: &Path,
        reference: &crate::Header,
        dims: [usize; 3],
        nvol: usize,
        data: Vec<f32>,
    ) {
        let tmp = self.temp_for(final_path);
        let (fin, reference) = (final_path.to_path_buf(), reference.clone());
        let background = Arc::clone(&self.background);
        background.start();
        rayon::spawn(move || {
            let write = || {
                crate::nifti::write_temporary(&tmp, &reference, dims, nvol, &data).map_err(|e| match e {
                    Error::Output { msg, .. } => Error::output(&fin, msg),
                    other => other,
                })
            };
            // A panic on rayon's pool would abort the process: make it this output's error.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(write))
                .unwrap_or_else(|_| Err(Error::output(&fin, "the writer panicked")));
            background.end(result);
        });
    }

    /// Wait for the background writes; the first error among them.
    pub fn wait(&self) -> Result<()> {
        self.background.wait()
    }

    /// Wait for the background writes, then rename every temporary to its final name and
    /// return the final paths, in the order they were first requested (the marker, if any,
    /// renamed last). If a write failed, nothing is renamed. If a rename fails, the outputs
    /// already renamed stay (without the marker) and the rest are deleted; the error names
    /// the output that failed. An interrupt arriving meanwhile waits for the end.
    pub fn commit(mut self) -> Result<Vec<PathBuf>> {
        self.wait()?;
        let held = crate::temps::hold()
            .map_err(|e| Error::output(self.planned().first().cloned().unwrap_or_default(), crate::io_msg(&e)))?;
        let done = self.planned();
        let mut renames = std::mem::take(&mut self.pending);
        if let Some(i) = self.marker.as_ref().and_then(|m| renames.iter().position(|r| &r.fin == m)) {
            let marker = renames.remove(i);
            renames.push(marker);
            crate::journal::commit(&renames, self.pause)?;
        } else {
            for (k, r) in renames.iter().enumerate() {
                if let Err(e) = std::fs::rename(&r.tmp, &r.fin) {
                    renames[k..].iter().for_each(|r| drop(std::fs::remove_file(&r.tmp)));
                    return Err(Error::output(
                        &r.fin,
                        format!("cannot rename from {}: {}", r.tmp.display(), crate::io_msg(&e)),
                    ));
                }
            }
        }
        drop(held);
        Ok(done)
    }
}

impl Drop for OutputSet {
    /// Remove temporaries that were never committed (after the background writes that may
    /// still be creating them); a missing one (never written) is fine.
    fn drop(&mut self) {
        let _ = self.background.wait();
        for r in self.pending.drain(..) {
            let _ = std::fs::remove_file(r.tmp);
        }
    }
}

/// Check that the directory an output prefix points into exists and is writable, so a
/// run fails in its first second rather than after hours of permutations. `prefix_path` is
/// the output prefix (e.g. `results/study1`, whose directory is `results`; a bare name
/// means the current directory). Writability is tested by creating and removing a file.
pub fn check_dir(prefix_path: &Path) -> Result<()> {
    let dir = match prefix_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(Error::output(dir, "output directory is not a directory")),
        Err(_) => return Err(Error::output(dir, "output directory does not exist")),
    }
    let probe = crate::temps::temp_name(&dir.join("probe"));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::output(dir, format!("output directory is not writable ({})", crate::io_msg(&e)))),
    }
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

    fn header() -> crate::Header {
        crate::nifti::header_from_affine(
            [2, 2, 2],
            [1.0; 3],
            [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]],
            4,
        )
    }

    #[test]
    fn temp_names_keep_extension() {
        let mut o = OutputSet::new();
        let pid = std::process::id();
        assert_eq!(
            o.temp_for(Path::new("d/out_tstat1.nii.gz")),
            PathBuf::from(format!("d/.voxflip-{pid}-out_tstat1.nii.gz"))
        );
        assert_eq!(
            o.temp_for(Path::new("d/out.clusters.tsv")),
            PathBuf::from(format!("d/.voxflip-{pid}-out.clusters.tsv"))
        );
        assert_eq!(o.temp_for(Path::new("README")), PathBuf::from(format!(".voxflip-{pid}-README")));
        assert_eq!(
            o.temp_for(Path::new("d/out_tstat1.nii.gz")),
            PathBuf::from(format!("d/.voxflip-{pid}-out_tstat1.nii.gz"))
        );
        assert_eq!(o.pending.len(), 3);
        o.pending.clear();
    }

    #[test]
    fn commit_renames_all() {
        let d = voxflip_testkit::tempdir().unwrap();
        let mut o = OutputSet::new();
        let map = d.path().join("out_tstat1.nii.gz");
        let txt = d.path().join("out_provenance.json");
        o.write_map(&map, &header(), [2, 2, 2], &[1.5; 8]).unwrap();
        o.write_text(&txt, "{}\n").unwrap();
        assert!(!map.exists() && !txt.exists());
        assert_eq!(names(d.path()).len(), 2);
        let done = o.commit().unwrap();
        assert_eq!(done, vec![map.clone(), txt.clone()]);
        assert_eq!(names(d.path()), vec!["out_provenance.json", "out_tstat1.nii.gz"]);
        assert_eq!(crate::nifti::read_image(&map).unwrap().data, vec![1.5; 8]);
        assert_eq!(std::fs::read_to_string(&txt).unwrap(), "{}\n");
    }

    #[test]
    fn drop_removes_uncommitted() {
        let d = voxflip_testkit::tempdir().unwrap();
        {
            let mut o = OutputSet::new();
            o.write_map(&d.path().join("a.nii.gz"), &header(), [2, 2, 2], &[0.0; 8]).unwrap();
            o.write_text(&d.path().join("b.txt"), "x").unwrap();
            // A failed write names the final file, not the temporary.
            let e = o.write_map(&d.path().join("c.nii.gz"), &header(), [2, 2, 2], &[0.0; 3]).unwrap_err().to_string();
            assert!(e.contains("c.nii.gz: cannot write") && !e.contains(".voxflip-"), "{e}");
            assert_eq!(names(d.path()).len(), 2);
        }
        assert!(names(d.path()).is_empty());
    }

    /// Maps written in the background are the same bytes as maps written directly, and are
    /// renamed with the rest; a background write that fails stops the commit (naming its
    /// final file), and no temporary is left behind.
    #[test]
    fn background_writes_match_direct_writes_and_fail_the_commit() {
        let d = voxflip_testkit::tempdir().unwrap();
        let dims = [64, 64, 64];
        let maps: Vec<Vec<f32>> =
            (0..6).map(|k| (0..64 * 64 * 64).map(|i| ((i * (k + 3)) % 977) as f32 * 0.25).collect()).collect();
        let mut o = OutputSet::new();
        let mut direct = Vec::new();
        for (k, m) in maps.iter().enumerate() {
            let p = d.path().join(format!("direct{k}.nii.gz"));
            crate::nifti::write_image(&p, &header(), dims, 1, m).unwrap();
            direct.push(std::fs::read(&p).unwrap());
            o.write_image_later(&d.path().join(format!("out{k}.nii.gz")), &header(), dims, 1, m.clone());
        }
        o.write_text(&d.path().join("out.json"), "{}").unwrap();
        let done = o.commit().unwrap();
        assert_eq!(done.len(), 7);
        for (k, bytes) in direct.iter().enumerate() {
            assert!(std::fs::read(d.path().join(format!("out{k}.nii.gz"))).unwrap() == *bytes, "map {k}");
        }
        assert_eq!(names(d.path()).len(), 13, "{:?}", names(d.path()));

        let e = failing_set_error(d.path());
        assert!(e.contains("bad.nii.gz: cannot write") && !e.contains(".voxflip-"), "{e}");
        assert_eq!(names(d.path()).len(), 13, "nothing of the failed set remains: {:?}", names(d.path()));
        // Dropped without a commit: the background writes finish, then their files go.
        {
            let mut o = OutputSet::new();
            for (k, m) in maps.iter().take(4).enumerate() {
                o.write_image_later(&d.path().join(format!("gone{k}.nii.gz")), &header(), dims, 1, m.clone());
            }
        }
        assert_eq!(names(d.path()).len(), 13);
    }

    /// A set with a good and a failing background write; the commit's error.
    fn failing_set_error(dir: &Path) -> String {
        let mut o = OutputSet::new();
        o.write_image_later(&dir.join("good.nii.gz"), &header(), [2, 2, 2], 1, vec![1.0; 8]);
        o.write_image_later(&dir.join("bad.nii.gz"), &header(), [2, 2, 2], 1, vec![1.0; 3]);
        o.commit().unwrap_err().to_string()
    }

    #[test]
    fn check_dir_reports_missing_and_accepts_existing() {
        let d = voxflip_testkit::tempdir().unwrap();
        OutputSet::check_dir(&d.path().join("prefix")).unwrap();
        check_dir(Path::new("bare_prefix")).unwrap();
        let e = check_dir(&d.path().join("nope/prefix")).unwrap_err().to_string();
        assert!(e.contains("nope: cannot write: output directory does not exist") && !e.contains('\n'), "{e}");
        let f = d.path().join("file");
        std::fs::write(&f, "").unwrap();
        let e = check_dir(&f.join("prefix")).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        assert_eq!(names(d.path()), vec!["file"]);
    }
}
