//! The file that holds a run's permutation state (shards, checkpoints, a kept null state):
//! a JSON header the caller defines and a list of little-endian arrays, checksummed, and
//! written durably under its final name (a temporary renamed over it after an fsync), so a
//! reader sees either the whole previous file or the whole new one.
//!
//! Layout: the magic line `voxflip-null-state\n`, the format version (u32), the header's
//! length in bytes (u64), the header (UTF-8 JSON), the number of arrays (u64), each array
//! as its kind (u8: 0 = f32, 1 = u32), its length in elements (u64) and its elements, and a
//! CRC-32 of everything before it (u32). All integers little-endian.
use crate::error::{io_msg, Error, Result};
use std::io::Write;
use std::path::Path;

const MAGIC: &[u8] = b"voxflip-null-state\n";
const VERSION: u32 = 1;

/// One array of a state file.
#[derive(Clone, Debug, PartialEq)]
pub enum StateArray {
    F32(Vec<f32>),
    U32(Vec<u32>),
}

/// A state file's contents: the caller's header and arrays.
#[derive(Clone, Debug, PartialEq)]
pub struct StateFile {
    pub header: String,
    pub arrays: Vec<StateArray>,
}

impl StateFile {
    fn encode(&self) -> Vec<u8> {
        let elems: usize = self.arrays.iter().map(|a| 9 + 4 * a.len()).sum();
        let mut b = Vec::with_capacity(MAGIC.len() + 24 + self.header.len() + elems);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&(self.header.len() as u64).to_le_bytes());
        b.extend_from_slice(self.header.as_bytes());
        b.extend_from_slice(&(self.arrays.len() as u64).to_le_bytes());
        for a in &self.arrays {
            match a {
                StateArray::F32(v) => {
                    b.push(0);
                    b.extend_from_slice(&(v.len() as u64).to_le_bytes());
                    v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
                }
                StateArray::U32(v) => {
                    b.push(1);
                    b.extend_from_slice(&(v.len() as u64).to_le_bytes());
                    v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
                }
            }
        }
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(bytes: &[u8]) -> std::result::Result<StateFile, String> {
        if !bytes.starts_with(MAGIC) {
            return Err("not a voxflip null-state file".into());
        }
        if bytes.len() < MAGIC.len() + 4 + 4 {
            return Err("truncated".into());
        }
        let (body, tail) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes(tail.try_into().expect("4 bytes")) {
            return Err("checksum mismatch: the file is truncated or damaged".into());
        }
        let mut r = Reader { b: &body[MAGIC.len()..] };
        let version = r.u32()?;
        if version != VERSION {
            return Err(format!("format version {version}; this voxflip reads version {VERSION}"));
        }
        let hlen = r.len()?;
        let header = String::from_utf8(r.take(hlen)?.to_vec()).map_err(|_| "header is not UTF-8".to_string())?;
        let n = r.len()?;
        let mut arrays = Vec::new();
        for _ in 0..n {
            let kind = r.take(1)?[0];
            let len = r.len()?;
            let raw = r.take(len.checked_mul(4).ok_or("array length overflows")?)?;
            let words = raw.chunks_exact(4).map(|c| c.try_into().expect("4 bytes"));
            arrays.push(match kind {
                0 => StateArray::F32(words.map(f32::from_le_bytes).collect()),
                1 => StateArray::U32(words.map(u32::from_le_bytes).collect()),
                k => return Err(format!("unknown array kind {k}")),
            });
        }
        if !r.b.is_empty() {
            return Err("trailing bytes after the arrays".into());
        }
        Ok(StateFile { header, arrays })
    }
}

impl StateArray {
    pub fn len(&self) -> usize {
        match self {
            StateArray::F32(v) => v.len(),
            StateArray::U32(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if n > self.b.len() {
            return Err("truncated".into());
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn len(&mut self) -> std::result::Result<usize, String> {
        let x = u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"));
        usize::try_from(x).map_err(|_| "length overflows".to_string())
    }
}

/// Write `state` to `path` durably: into a temporary beside it, fsynced, renamed over
/// `path`, and the directory fsynced, so that a kill at any moment leaves either the old
/// file or the new one under `path`.
pub fn write_state(path: &Path, state: &StateFile) -> Result<()> {
    write_durably(path, &state.encode())
}

/// Read a state file written by [`write_state`]; a file that is not one, or is damaged,
/// is an input error naming it.
pub fn read_state(path: &Path) -> Result<StateFile> {
    let bytes = std::fs::read(path).map_err(|e| Error::input(path, io_msg(&e)))?;
    StateFile::decode(&bytes).map_err(|m| Error::input(path, m))
}

/// `bytes` under `path`, all or nothing (see [`write_state`]).
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = crate::temps::dir_of(path);
    // A temporary as the output sets name theirs, so that an interrupt removes it and a
    // later run knows it for a dead run's.
    let mut tmp = crate::temps::temp_name(path).into_os_string();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let fail = |e: std::io::Error| Error::output(path, io_msg(&e));
    let written = (|| {
        let mut f = crate::temps::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(e));
    }
    // The rename itself is durable once the directory is synced (not possible everywhere:
    // best effort).
    crate::temps::sync_dir(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StateFile {
        StateFile {
            header: r#"{"a": 1}"#.into(),
            arrays: vec![
                StateArray::F32(vec![1.5, -0.0, f32::NAN, f32::INFINITY]),
                StateArray::U32(vec![]),
                StateArray::U32(vec![7, u32::MAX]),
            ],
        }
    }

    #[test]
    fn round_trip_is_bit_exact() {
        let dir = voxflip_testkit::tempdir().unwrap();
        let p = dir.path().join("s");
        write_state(&p, &sample()).unwrap();
        let back = read_state(&p).unwrap();
        assert_eq!(back.header, sample().header);
        // NaN != NaN: compare bits.
        let bits = |s: &StateFile| -> Vec<Vec<u32>> {
            s.arrays
                .iter()
                .map(|a| match a {
                    StateArray::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
                    StateArray::U32(v) => v.clone(),
                })
                .collect()
        };
        assert_eq!(bits(&back), bits(&sample()));
        // No temporary left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn damage_is_detected_and_named() {
        let dir = voxflip_testkit::tempdir().unwrap();
        let p = dir.path().join("s");
        let bytes = sample().encode();
        for cut in [0, 10, MAGIC.len() + 3, bytes.len() - 1] {
            std::fs::write(&p, &bytes[..cut]).unwrap();
            let e = read_state(&p).unwrap_err().to_string();
            assert!(e.starts_with(&p.display().to_string()), "{e}");
        }
        let mut flipped = bytes.clone();
        flipped[MAGIC.len() + 20] ^= 1;
        std::fs::write(&p, &flipped).unwrap();
        assert!(read_state(&p).unwrap_err().to_string().contains("checksum"));
        std::fs::write(&p, b"hello").unwrap();
        assert!(read_state(&p).unwrap_err().to_string().contains("not a voxflip null-state file"));
    }
}
