//! Helpers voxflip's tests share.
//!
//! Every ordering of 0..n, the brute-force enumeration the permutation tests compare with.
//!
//! A temporary directory, removed with everything in it when dropped. (The `tempfile`
//! crate would do; it pulls `rustix` with features that no release dependency needs, which
//! made a test build recompile the whole wgpu stack after a release build.)
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A fresh directory under the system's temporary directory.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Creates a new, empty temporary directory, unique to this process and call.
pub fn tempdir() -> std::io::Result<TempDir> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    loop {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("voxflip-test-{}-{stamp}-{k}", std::process::id()));
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(TempDir { path }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Every ordering of 0..n (Heap's algorithm), the identity first, as row sources:
/// position m gets row o[m].
pub fn all_orderings(n: usize) -> Vec<Vec<usize>> {
    let mut a: Vec<usize> = (0..n).collect();
    let mut out = vec![a.clone()];
    let mut c = vec![0usize; n];
    let mut i = 0;
    while i < n {
        if c[i] < i {
            if i % 2 == 0 {
                a.swap(0, i);
            } else {
                a.swap(c[i], i);
            }
            out.push(a.clone());
            c[i] += 1;
            i = 0;
        } else {
            c[i] = 0;
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    /// n! distinct orderings, each a permutation of 0..n, the identity first.
    #[test]
    fn orderings_are_every_permutation_once() {
        for n in 0..=6usize {
            let all = super::all_orderings(n);
            assert_eq!(all.len(), (1..=n).product::<usize>(), "n = {n}");
            assert_eq!(all[0], (0..n).collect::<Vec<_>>());
            let distinct: std::collections::HashSet<_> = all.iter().cloned().collect();
            assert_eq!(distinct.len(), all.len());
            for o in &all {
                let mut sorted = o.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, (0..n).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn directories_are_fresh_and_removed() {
        let (a, b) = (super::tempdir().unwrap(), super::tempdir().unwrap());
        assert_ne!(a.path(), b.path());
        std::fs::write(a.path().join("f"), "x").unwrap();
        let p = a.path().to_path_buf();
        drop(a);
        assert!(!p.exists());
        assert!(b.path().is_dir());
    }
}
