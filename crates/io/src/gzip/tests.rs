use super::*;

/// Bytes that compress somewhat, like a brain map: runs of zeros (outside the mask)
/// between stretches of noisy floats, from a fixed-seed xorshift so the test repeats.
fn map_like(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        if s.is_multiple_of(5) {
            out.extend(std::iter::repeat_n(0u8, (s >> 40) as usize % 3000));
        } else {
            out.extend(((s >> 11) as f32 / (1u64 << 53) as f32 - 0.5).to_le_bytes());
        }
    }
    out.truncate(len);
    out
}

/// The member's deflate body (between header and trailer), for an independent inflater.
fn body(gz: &[u8]) -> &[u8] {
    let xlen = u16::from_le_bytes([gz[10], gz[11]]) as usize;
    &gz[12 + xlen..gz.len() - 8]
}

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
}

#[test]
fn chunk_sizes_are_whole_mebibytes_and_bounded_in_number() {
    for len in [0, 1, MIN_CHUNK - 1, MIN_CHUNK, MIN_CHUNK + 1, 209_425_608, 40 << 30] {
        let size = chunk_size(len);
        assert_eq!(size % MIN_CHUNK, 0, "{len}");
        assert!(len.div_ceil(size) <= MAX_CHUNKS, "{len}: {size}");
        assert!(size == MIN_CHUNK || len.div_ceil(size - MIN_CHUNK) > MAX_CHUNKS, "{len}: {size} not the smallest");
    }
}

#[test]
fn round_trip_checked_by_an_independent_inflater() {
    for len in [0, 1, 1000, MIN_CHUNK, MIN_CHUNK + 1, 3 * MIN_CHUNK + 12_345] {
        let data = map_like(len, len as u64 + 7);
        for level in [1, 6] {
            let gz = compress(&data, level);
            // miniz_oxide is a separate deflate implementation from zlib-rs.
            assert_eq!(miniz_oxide::inflate::decompress_to_vec(body(&gz)).unwrap(), data, "{len} {level}");
            let trailer = &gz[gz.len() - 8..];
            assert_eq!(u32::from_le_bytes(trailer[..4].try_into().unwrap()), crc32fast::hash(&data));
            assert_eq!(u32::from_le_bytes(trailer[4..].try_into().unwrap()), len as u32);
            assert_eq!(decompress(&gz).unwrap(), data, "{len} {level}");
            assert_eq!(inflate_stream(&gz).unwrap(), data, "{len} {level}: as a plain gzip stream");
        }
    }
}

#[test]
fn bytes_do_not_depend_on_the_number_of_threads() {
    let data = map_like(5 * MIN_CHUNK + 999, 3);
    let one = in_pool(1, || compress(&data, 1));
    assert!(ChunkIndex::parse(&one).unwrap().spans.len() == 6);
    for threads in [2, 3, 8] {
        assert!(in_pool(threads, || compress(&data, 1)) == one, "{threads} threads");
    }
    // And the fill callback may be asked for the ranges in any order.
    let pieces = in_pool(4, || compress_with(data.len(), 1, |r, buf| buf.extend_from_slice(&data[r])));
    assert!(pieces == one);
}

#[test]
fn voxflip_files_are_inflated_chunk_by_chunk() {
    let data = map_like(4 * MIN_CHUNK + 5, 11);
    let gz = compress(&data, 1);
    let index = ChunkIndex::parse(&gz).expect("an index");
    assert_eq!((index.size, index.len, index.spans.len()), (MIN_CHUNK, data.len(), 5));
    assert_eq!(inflate_indexed(&gz, &index).unwrap().expect("the parallel path"), data);
}

#[test]
fn other_gzip_files_are_read_as_streams() {
    use std::io::Write;
    let data = map_like(2 * MIN_CHUNK + 3, 5);
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(&data).unwrap();
    let plain = e.finish().unwrap();
    assert_eq!(ChunkIndex::parse(&plain), None);
    assert_eq!(decompress(&plain).unwrap(), data);
    // Two members (ours, then another): the index covers only the first, so the file is
    // read as one stream of both.
    let mut two = compress(&data[..1000], 1);
    two.extend_from_slice(&plain);
    assert_eq!(ChunkIndex::parse(&two), None);
    assert_eq!(decompress(&two).unwrap(), [&data[..1000], &data[..]].concat());
}

#[test]
fn corrupt_or_truncated_data_is_an_error_not_a_panic() {
    let data = map_like(3 * MIN_CHUNK, 9);
    let gz = compress(&data, 1);
    let mut flipped = gz.clone();
    let mid = body(&gz).len() / 2 + (gz.len() - 8 - body(&gz).len());
    flipped[mid] ^= 0x55;
    assert!(decompress(&flipped).is_err());
    let mut bad_crc = gz.clone();
    let at = gz.len() - 8;
    bad_crc[at] ^= 1;
    let e = decompress(&bad_crc).unwrap_err();
    assert!(e.contains("corrupt"), "{e}");
    for cut in [gz.len() - 1, gz.len() - 9, gz.len() / 2, 20, 3] {
        assert!(decompress(&gz[..cut]).is_err(), "cut at {cut}");
    }
    // An index that claims an absurd length is not trusted with an allocation; the file
    // is then read as a plain stream, which ignores the extra field.
    let mut huge = gz.clone();
    let xlen = u16::from_le_bytes([gz[10], gz[11]]) as usize;
    let sub = find_subfield(&gz[12..12 + xlen], INDEX_ID).unwrap().as_ptr() as usize - gz.as_ptr() as usize;
    huge[sub + 9..sub + 17].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert_eq!(ChunkIndex::parse(&huge), None);
    assert!(decompress(&huge).unwrap() == data);
}
