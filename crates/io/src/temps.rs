//! This process's temporary files: how they are named, created and abandoned on an
//! interrupt, and the temporaries of runs that died, cleaned up by the next run.
//!
//! Every temporary is named `.voxflip-{pid}-{final file name}` beside its final file, so
//! that whose it is (the pid) and which output set it belongs to (the prefix) can be read
//! from the name alone, by this process on an interrupt and by a later run after a kill.
//!
//! One process-wide lock guards the creation of temporaries and the renames of a commit
//! ([`crate::outputs::OutputSet::commit`]). An interrupt ([`abandon`]) takes it too, so it
//! waits for a commit under way to finish (the renames are never cut in half by Ctrl-C),
//! then removes this process's temporaries and refuses any new one until the process exits.
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// The directories this process created temporaries in, and whether it was interrupted.
struct Registry {
    dirs: Vec<PathBuf>,
    abandoned: bool,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { dirs: Vec::new(), abandoned: false });

/// The registry's lock (a panic elsewhere while holding it leaves the data usable).
pub(crate) struct Held(MutexGuard<'static, Registry>);

/// Take the lock: interrupts wait until it is released.
pub(crate) fn hold() -> std::io::Result<Held> {
    let g = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    if g.abandoned {
        return Err(std::io::Error::other("the run was interrupted"));
    }
    Ok(Held(g))
}

/// The directory a path is in (`.` for a bare name).
pub(crate) fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The start of every temporary's name of process `pid`.
fn tag(pid: u32) -> String {
    format!(".voxflip-{pid}-")
}

/// This process's temporary for the final file `final_path` (same directory, so that the
/// rename is atomic; the final name's extension stays last).
pub fn temp_name(final_path: &Path) -> PathBuf {
    let name = final_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let own = tag(std::process::id());
    // A temporary of a temporary (a durable write into an output's temporary) keeps one tag.
    let name = name.strip_prefix(&own).unwrap_or(&name);
    final_path.with_file_name(format!("{own}{name}"))
}

/// Create (truncate) a temporary file, recording its directory so that an interrupt can
/// find it; refused once the process was interrupted. Creation holds the lock, so no
/// temporary appears after [`abandon`] removed them.
pub(crate) fn create(path: &Path) -> std::io::Result<File> {
    let mut held = hold()?;
    let dir = dir_of(path).to_path_buf();
    if !held.0.dirs.contains(&dir) {
        held.0.dirs.push(dir);
    }
    File::create(path)
}

/// Best-effort fsync of a directory, so that renames in it survive a crash.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// On SIGINT or SIGTERM: wait for a commit in progress, then remove every temporary this
/// process created and refuse new ones. Returns how many files were removed. Meant to be
/// followed by the process's exit; the lock stays taken until then.
pub fn abandon() -> usize {
    let mut g = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    g.abandoned = true;
    let own = tag(std::process::id());
    let mut removed = 0;
    for dir in &g.dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&own) && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
    }
    // Held until the process exits: no temporary can be created, nor a commit started.
    std::mem::forget(g);
    removed
}

/// Whether process `pid` may still be running (then its temporaries are left alone). This
/// process counts as running; so does any process that cannot be asked.
fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    #[cfg(unix)]
    {
        let Ok(p) = libc::pid_t::try_from(pid) else { return false };
        // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
        let r = unsafe { libc::kill(p, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        true
    }
}

/// A file of a process that is no longer running: its pid and the rest of its name.
fn dead_temporary(name: &str) -> Option<(u32, &str)> {
    let rest = name.strip_prefix(".voxflip-")?;
    let (pid, rest) = rest.split_once('-')?;
    let pid: u32 = pid.parse().ok()?;
    (!alive(pid)).then_some((pid, rest))
}

/// What [`clean_up_after_dead_runs`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// Output sets whose commit a killed run began, finished here (their marker files).
    pub rolled_forward: Vec<PathBuf>,
    /// Stale temporaries removed.
    pub removed: usize,
}

/// Before a run writes under `prefix_path`: finish the commits that runs killed during their
/// renames began (any prefix in that directory: see [`crate::journal`]), then remove the
/// temporaries that dead runs left with this prefix (`.voxflip-{pid}-{prefix}_*`, and their
/// write probes). Temporaries of running processes are never touched.
pub fn clean_up_after_dead_runs(prefix_path: &Path) -> Cleanup {
    let dir = dir_of(prefix_path);
    let base = prefix_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut done = Cleanup::default();
    let names = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|es| es.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    };
    for name in names(dir) {
        if name.ends_with(crate::journal::SUFFIX) && dead_temporary(&name).is_some() {
            if let Some(marker) = crate::journal::roll_forward(&dir.join(&name)) {
                done.rolled_forward.push(marker);
            }
        }
    }
    for name in names(dir) {
        let Some((_, rest)) = dead_temporary(&name) else { continue };
        let ours = (!base.is_empty() && rest.starts_with(&format!("{base}_"))) || rest == "probe";
        if ours && std::fs::remove_file(dir.join(&name)).is_ok() {
            done.removed += 1;
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pid no process has: past the kernel's maximum (4,194,304 on Linux).
    const DEAD: u32 = 999_999_999;

    #[test]
    fn temp_names_carry_the_pid_once() {
        let pid = std::process::id();
        let t = temp_name(Path::new("d/out_tstat1.nii.gz"));
        assert_eq!(t, PathBuf::from(format!("d/.voxflip-{pid}-out_tstat1.nii.gz")));
        assert_eq!(temp_name(&t), t);
        assert!(alive(pid) && !alive(DEAD) && alive(1));
    }

    #[test]
    fn dead_runs_temporaries_of_this_prefix_go_and_nothing_else() {
        let d = voxflip_testkit::tempdir().unwrap();
        let own = std::process::id();
        let files = [
            format!(".voxflip-{DEAD}-out_tstat1.nii.gz"),
            format!(".voxflip-{DEAD}-out_checkpoint.tmp"),
            format!(".voxflip-{DEAD}-probe"),
            format!(".voxflip-{DEAD}-other_tstat1.nii.gz"),
            format!(".voxflip-{DEAD}-out2_tstat1.nii.gz"),
            format!(".voxflip-{own}-out_tstat1.nii.gz"),
            ".voxflip-1-out_tstat1.nii.gz".to_string(),
            "out_tstat1.nii.gz".to_string(),
        ];
        for f in &files {
            std::fs::write(d.path().join(f), "").unwrap();
        }
        let c = clean_up_after_dead_runs(&d.path().join("out"));
        assert_eq!(c, Cleanup { rolled_forward: vec![], removed: 3 });
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want = files[3..].to_vec();
        want.sort();
        assert_eq!(left, want);
    }
}
