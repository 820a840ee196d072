//! gzip (RFC 1952) for .nii.gz, compressed and decompressed on every core.
//!
//! Writing: the uncompressed stream is cut into chunks at fixed offsets (a function of its
//! length only), each chunk is deflated on its own (a fresh compressor, no dictionary from
//! the chunk before) and all but the last end with a sync flush, so the chunks joined in
//! order are one valid deflate stream: one standard gzip member, as pigz writes it, that
//! gzip, zlib, nibabel and FSL read. The bytes depend only on the data and the level, never
//! on the number of threads or on which thread compressed which chunk.
//!
//! Reading: the member's header carries, in an extra field (FEXTRA, subfield `VF`, which
//! other readers skip), the chunk size and each chunk's compressed length, so a file that
//! voxflip wrote is inflated chunk by chunk in parallel and checked against the trailer's
//! CRC-32 and length. Any other gzip file (no index, several members, an index that does
//! not add up) is inflated by one streaming decoder.
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use rayon::prelude::*;
use std::ops::Range;

/// Smallest chunk: large enough that restarting the compressor costs nothing measurable in
/// size, small enough that a 3.6 MB map (one 2 mm volume) still spreads over four cores.
const MIN_CHUNK: usize = 1 << 20;
/// At most this many chunks; longer streams get larger chunks (4 bytes each in the index,
/// which has to fit the 65,535-byte extra field).
const MAX_CHUNKS: usize = 8192;
/// Subfield identifier of the chunk index in the gzip extra field.
const INDEX_ID: [u8; 2] = *b"VF";
/// Index layout version (the first byte of the subfield's data).
const INDEX_VERSION: u8 = 1;
/// The fixed part of the gzip header: magic, CM = deflate, FLG = FEXTRA.
const MAGIC: [u8; 2] = [0x1f, 0x8b];
const FEXTRA: u8 = 0x04;

/// The chunk size for an uncompressed stream of `len` bytes: a multiple of `MIN_CHUNK`, so
/// chunk boundaries fall on element boundaries of every NIfTI datatype after a header whose
/// size is a multiple of 8.
pub fn chunk_size(len: usize) -> usize {
    let per = len.div_ceil(MAX_CHUNKS).max(1);
    per.div_ceil(MIN_CHUNK) * MIN_CHUNK
}

/// gzip-compress a stream of `len` bytes at `level` (0-9). `fill(range, buf)` appends the
/// stream's bytes `range` to `buf` (so the caller need not hold the stream in one piece).
/// Chunks are compressed in parallel on rayon's pool; the result is the same for any pool.
pub fn compress_with(len: usize, level: u32, fill: impl Fn(Range<usize>, &mut Vec<u8>) + Sync) -> Vec<u8> {
    let size = chunk_size(len);
    let n = len.div_ceil(size).max(1);
    let chunks: Vec<(Vec<u8>, crc32fast::Hasher)> = (0..n)
        .into_par_iter()
        .map_init(Vec::new, |buf, i| {
            let range = i * size..((i + 1) * size).min(len);
            buf.clear();
            fill(range.clone(), buf);
            assert_eq!(buf.len(), range.len(), "fill must append exactly the bytes asked for");
            let mut crc = crc32fast::Hasher::new();
            crc.update(buf);
            (deflate_chunk(buf, level, i + 1 == n), crc)
        })
        .collect();
    let mut crc = crc32fast::Hasher::new();
    let mut index = vec![INDEX_VERSION];
    index.extend((size as u64).to_le_bytes());
    index.extend((len as u64).to_le_bytes());
    for (bytes, c) in &chunks {
        crc.combine(c);
        index.extend(u32::try_from(bytes.len()).expect("a chunk compresses to under 4 GiB").to_le_bytes());
    }
    let body: usize = chunks.iter().map(|(b, _)| b.len()).sum();
    let mut out = Vec::with_capacity(body + index.len() + 32);
    // flate2's GzEncoder conventions: MTIME 0 (reproducible), XFL 4 for the fastest level
    // and 2 for the best, OS 255 (unknown).
    let xfl = match level {
        0 | 1 => 4,
        9 => 2,
        _ => 0,
    };
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[8, FEXTRA, 0, 0, 0, 0, xfl, 255]);
    let sub_len = u16::try_from(index.len()).expect("MAX_CHUNKS keeps the index small");
    out.extend((sub_len + 4).to_le_bytes());
    out.extend_from_slice(&INDEX_ID);
    out.extend(sub_len.to_le_bytes());
    out.extend_from_slice(&index);
    for (bytes, _) in &chunks {
        out.extend_from_slice(bytes);
    }
    out.extend(crc.finalize().to_le_bytes());
    out.extend((len as u32).to_le_bytes());
    out
}

/// gzip-compress `data` (see [`compress_with`]).
pub fn compress(data: &[u8], level: u32) -> Vec<u8> {
    compress_with(data.len(), level, |r, buf| buf.extend_from_slice(&data[r]))
}

/// One chunk as raw deflate: ends with a sync flush (byte-aligned, not final) unless it is
/// the last chunk, which finishes the stream.
fn deflate_chunk(input: &[u8], level: u32, last: bool) -> Vec<u8> {
    let mut c = Compress::new(Compression::new(level), false);
    // Stored blocks bound the output: 5 bytes per 16 KiB block, plus the flush.
    let mut out = Vec::with_capacity(input.len() + input.len() / 1000 + 64);
    let flush = if last { FlushCompress::Finish } else { FlushCompress::Sync };
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity() / 4 + 64);
        }
        let consumed = c.total_in() as usize;
        let status =
            c.compress_vec(&input[consumed..], &mut out, flush).expect("deflate of in-memory data cannot fail");
        let done_in = c.total_in() as usize == input.len();
        match status {
            Status::StreamEnd => break,
            // A sync flush is complete once all input is in and the output was not filled.
            _ if !last && done_in && out.len() < out.capacity() => break,
            _ => {}
        }
    }
    out
}

/// Decompress a whole gzip file (one member or several). A member voxflip wrote is inflated
/// in parallel when it is the whole file; anything else by one streaming decoder. Errors say
/// what is wrong with the data, for the caller to put after the file name.
pub fn decompress(raw: &[u8]) -> Result<Vec<u8>, String> {
    match decompress_indexed(raw)? {
        Some(out) => Ok(out),
        None => inflate_stream(raw),
    }
}

/// Decompress a gzip member that voxflip wrote, in parallel; `Ok(None)` for any other
/// gzip file (no index, several members, an index that does not add up), which the caller
/// then inflates as a stream.
pub fn decompress_indexed(raw: &[u8]) -> Result<Option<Vec<u8>>, String> {
    match ChunkIndex::parse(raw) {
        Some(index) => inflate_indexed(raw, &index),
        None => Ok(None),
    }
}

/// One streaming decoder over every member (what gzip -d does).
fn inflate_stream(raw: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    // The trailer holds the uncompressed size mod 2^32: a good capacity hint for images
    // under 4 GiB, which avoids repeated reallocation of large 4D files.
    let isize = u32::from_le_bytes(raw[raw.len().saturating_sub(4)..].try_into().unwrap_or([0; 4])) as usize;
    let hint = if isize >= raw.len() && isize / 1100 <= raw.len() { isize } else { raw.len().saturating_mul(3) };
    let mut out = Vec::with_capacity(hint);
    flate2::read::MultiGzDecoder::new(raw)
        .read_to_end(&mut out)
        .map_err(|e| format!("corrupt or truncated gzip data ({})", crate::io_msg(&e)))?;
    Ok(out)
}

/// The chunk index of a gzip member that voxflip wrote.
#[derive(Debug, PartialEq)]
struct ChunkIndex {
    /// Uncompressed bytes per chunk (the last may be shorter).
    size: usize,
    /// Uncompressed length of the member.
    len: usize,
    /// Where each chunk's deflate data lies in the file.
    spans: Vec<Range<usize>>,
}

impl ChunkIndex {
    /// The index in `raw`'s first member, if it has one that is consistent with the file's
    /// length (its chunks end exactly 8 bytes, the trailer, before the end of the file).
    fn parse(raw: &[u8]) -> Option<ChunkIndex> {
        if raw.len() < 12 || raw[..2] != MAGIC || raw[2] != 8 || raw[3] & FEXTRA == 0 {
            return None;
        }
        let flg = raw[3];
        let xlen = u16::from_le_bytes([raw[10], raw[11]]) as usize;
        let extra = raw.get(12..12 + xlen)?;
        let mut pos = 12 + xlen;
        // FNAME, FCOMMENT (zero-terminated), FHCRC: skipped so any header is understood.
        for flag in [0x08u8, 0x10] {
            if flg & flag != 0 {
                pos += raw.get(pos..)?.iter().position(|&b| b == 0)? + 1;
            }
        }
        if flg & 0x02 != 0 {
            pos += 2;
        }
        let data = find_subfield(extra, INDEX_ID)?;
        if data.len() < 17 || data[0] != INDEX_VERSION {
            return None;
        }
        let size = usize::try_from(u64::from_le_bytes(data[1..9].try_into().ok()?)).ok()?;
        let len = usize::try_from(u64::from_le_bytes(data[9..17].try_into().ok()?)).ok()?;
        let lens = &data[17..];
        if size == 0 || lens.len() % 4 != 0 || lens.len() / 4 != len.div_ceil(size).max(1) {
            return None;
        }
        // Before trusting `len` with an allocation: the trailer must agree with it, and no
        // deflate stream expands more than 1032:1.
        let isize = u32::from_le_bytes(raw[raw.len() - 4..].try_into().ok()?);
        if isize != len as u32 || len / 1032 > raw.len() {
            return None;
        }
        let mut spans = Vec::with_capacity(lens.len() / 4);
        for l in lens.chunks_exact(4) {
            let l = u32::from_le_bytes(l.try_into().ok()?) as usize;
            spans.push(pos..pos.checked_add(l)?);
            pos += l;
        }
        (pos.checked_add(8)? == raw.len()).then_some(ChunkIndex { size, len, spans })
    }
}

/// The data of subfield `id` in a gzip extra field, if present and well formed.
fn find_subfield(mut extra: &[u8], id: [u8; 2]) -> Option<&[u8]> {
    while extra.len() >= 4 {
        let len = u16::from_le_bytes([extra[2], extra[3]]) as usize;
        let data = extra.get(4..4 + len)?;
        if extra[..2] == id {
            return Some(data);
        }
        extra = &extra[4 + len..];
    }
    None
}

/// Inflate an indexed member chunk by chunk in parallel, checking each chunk's length and
/// the trailer's CRC-32 and size. `Ok(None)`: the chunks are not what the index says (the
/// caller then decodes the file as a plain stream, which gives the real error if any).
fn inflate_indexed(raw: &[u8], index: &ChunkIndex) -> Result<Option<Vec<u8>>, String> {
    let mut out = vec![0u8; index.len];
    let n = index.spans.len();
    let crcs: Option<Vec<crc32fast::Hasher>> = out
        .par_chunks_mut(index.size.max(1))
        .zip(index.spans.par_iter())
        .enumerate()
        .map(|(i, (dst, span))| {
            inflate_chunk(&raw[span.clone()], dst, i + 1 == n)?;
            let mut crc = crc32fast::Hasher::new();
            crc.update(dst);
            Some(crc)
        })
        .collect();
    let Some(crcs) = crcs else { return Ok(None) };
    // An empty stream has one (empty) chunk but par_chunks_mut yields none.
    if crcs.len() != n && index.len > 0 {
        return Ok(None);
    }
    let mut crc = crc32fast::Hasher::new();
    crcs.iter().for_each(|c| crc.combine(c));
    let trailer = &raw[raw.len() - 8..];
    let (want_crc, want_len) = (
        u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes")),
        u32::from_le_bytes(trailer[4..].try_into().expect("4 bytes")),
    );
    if crc.finalize() != want_crc || want_len != index.len as u32 {
        return Err("corrupt gzip data (CRC-32 or length does not match the trailer)".into());
    }
    Ok(Some(out))
}

/// Inflate one chunk's raw deflate data into exactly `dst`; None unless it fills `dst`
/// exactly, uses all its input, and (for the last chunk) ends the stream.
fn inflate_chunk(src: &[u8], dst: &mut [u8], last: bool) -> Option<()> {
    let mut d = Decompress::new(false);
    loop {
        let (i, o) = (d.total_in() as usize, d.total_out() as usize);
        let status = d.decompress(&src[i..], &mut dst[o..], FlushDecompress::Sync).ok()?;
        let (i2, o2) = (d.total_in() as usize, d.total_out() as usize);
        if status == Status::StreamEnd {
            return (last && i2 == src.len() && o2 == dst.len()).then_some(());
        }
        if i2 == src.len() && o2 == dst.len() && !last {
            return Some(());
        }
        if (i2, o2) == (i, o) {
            return None;
        }
    }
}

#[cfg(test)]
mod tests;
