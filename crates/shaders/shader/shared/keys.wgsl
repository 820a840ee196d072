// Order-preserving f32 -> u32 keys, for atomicMax over floats: negative floats have all bits
// flipped, positive ones get the sign bit set, so unsigned comparison of keys is float
// comparison of values. The host's twin is voxflip_shaders::keys::key_of.

fn key_of(t: f32) -> u32 {
    let b = bitcast<u32>(t);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn key_of4(t: vec4<f32>) -> vec4<u32> {
    let b = bitcast<vec4<u32>>(t);
    return select(b | vec4<u32>(0x80000000u), ~b, (b & vec4<u32>(0x80000000u)) != vec4<u32>(0u));
}
