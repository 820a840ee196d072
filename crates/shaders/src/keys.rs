//! Order-preserving f32 -> u32 keys, as the shaders use them for atomicMax over floats
//! (`shader/shared/keys.wgsl`).

/// The key of `t`: unsigned comparison of keys is float comparison of values.
#[inline]
pub fn key_of(t: f32) -> u32 {
    let b = t.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// Inverse of [`key_of`]. Key 0 (no value seen) decodes to -inf.
#[inline]
pub fn value_of(key: u32) -> f32 {
    if key == 0 {
        f32::NEG_INFINITY
    } else if key & 0x8000_0000 != 0 {
        f32::from_bits(key & 0x7fff_ffff)
    } else {
        f32::from_bits(!key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_preserve_order() {
        let xs = [f32::NEG_INFINITY, -1e30, -2.5, -1e-30, -0.0, 0.0, 1e-30, 3.0, 1e30, f32::INFINITY];
        for w in xs.windows(2) {
            assert!(key_of(w[0]) <= key_of(w[1]), "{} {}", w[0], w[1]);
        }
        for &x in &xs[1..] {
            assert_eq!(value_of(key_of(x)).to_bits(), x.to_bits());
        }
    }
}
