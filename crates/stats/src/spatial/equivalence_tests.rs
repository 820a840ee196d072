//! The fast TFCE engine ([`super::tfce`]) against the reference engine
//! ([`super::tfce_reference`]), bit for bit.
//!
//! Both run the same floating-point operations in the same order (only the memory layout
//! differs), so equality is exact: p-values compare TFCE values with `>=`, and a last-bit
//! difference could move a tie. The maps are chosen to reach every branch where the order
//! of operations could differ: plateaus (many voxels join at one weight), values exactly on
//! the accumulated f32 levels, maxima below the first level, single voxels, non-finite and
//! non-positive values, masks touching every face of the grid, the three connectivities,
//! and exponents other than randomise's. The reference itself is held against brute-force
//! oracles in `oracle_tests`.

use super::*;

struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Smooth-ish random values on a grid (a running average along x, y and z of uniform
/// noise), centred so about half the voxels are positive.
fn smooth_values(rng: &mut Rng, dims: [usize; 3], passes: usize) -> Vec<f32> {
    let n: usize = dims.iter().product();
    let mut v: Vec<f32> = (0..n).map(|_| rng.uniform() - 0.5).collect();
    let strides = [1, dims[0], dims[0] * dims[1]];
    for _ in 0..passes {
        for axis in 0..3 {
            let s = strides[axis];
            let mut out = v.clone();
            for i in 0..n {
                let c = (i / s) % dims[axis];
                let mut acc = v[i];
                if c > 0 {
                    acc += v[i - s];
                }
                if c + 1 < dims[axis] {
                    acc += v[i + s];
                }
                out[i] = acc;
            }
            v = out;
        }
    }
    v
}

const PARAMS: [TfceParams; 5] = [
    TfceParams { h: 2.0, e: 0.5, conn: Connectivity::C6 },
    TfceParams { h: 2.0, e: 1.0, conn: Connectivity::C26 },
    TfceParams { h: 1.5, e: 0.75, conn: Connectivity::C18 },
    TfceParams { h: 0.0, e: 2.0, conn: Connectivity::C6 },
    TfceParams { h: 3.0, e: 0.5, conn: Connectivity::C26 },
];

/// All four entry points of both engines on one map; `dhs` are the stepwise steps tried.
/// The workspace is shared across calls (and engines) on purpose: a stale buffer from the
/// previous call must not leak into the next.
fn assert_same(dims: [usize; 3], mask: &[bool], values: &[f32], dhs: &[f32], ws: &mut Workspace, what: &str) {
    let map: Vec<f32> = (0..mask.len()).filter(|&i| mask[i]).map(|i| values[i]).collect();
    let mut fast = vec![f32::NAN; map.len()];
    let mut slow = vec![f32::NAN; map.len()];
    for p in PARAMS {
        let g = MaskGraph::from_mask(dims, mask, p.conn);
        for &dh in dhs {
            let a = tfce_stepwise_into(&g, &map, &p, dh, ws, &mut fast);
            let b = tfce_stepwise_reference_into(&g, &map, &p, dh, ws, &mut slow);
            assert_eq!(a, b, "{what} {p:?} dh {dh}: result");
            if a.is_err() {
                continue;
            }
            for v in 0..map.len() {
                assert_eq!(fast[v].to_bits(), slow[v].to_bits(), "{what} {p:?} dh {dh}: stepwise voxel {v}");
            }
            let (ma, mb) = (
                tfce_stepwise_max(&g, &map, &p, dh, ws).unwrap(),
                tfce_stepwise_reference_max(&g, &map, &p, dh, ws).unwrap(),
            );
            assert_eq!(ma.to_bits(), mb.to_bits(), "{what} {p:?} dh {dh}: stepwise max");
        }
        tfce_exact_into(&g, &map, &p, ws, &mut fast);
        tfce_exact_reference_into(&g, &map, &p, ws, &mut slow);
        for v in 0..map.len() {
            assert_eq!(fast[v].to_bits(), slow[v].to_bits(), "{what} {p:?}: exact voxel {v}");
        }
        let (ma, mb) = (tfce_exact_max(&g, &map, &p, ws), tfce_exact_reference_max(&g, &map, &p, ws));
        assert_eq!(ma.to_bits(), mb.to_bits(), "{what} {p:?}: exact max");
    }
}

fn positive_max(values: &[f32]) -> f32 {
    values.iter().copied().filter(|x| x.is_finite()).fold(0.0, f32::max)
}

#[test]
fn fast_equals_reference_on_smooth_maps_and_random_masks() {
    let mut rng = Rng(11);
    let mut ws = Workspace::new();
    for trial in 0..10 {
        let dims = [5 + trial % 5, 4 + trial % 4, 3 + trial % 3];
        let n: usize = dims.iter().product();
        let values = smooth_values(&mut rng, dims, 1 + trial % 2);
        // Full masks touch every face of the grid; sparse ones cut components apart.
        let density = [1.0, 0.9, 0.6][trial % 3];
        let mask: Vec<bool> = (0..n).map(|_| rng.uniform() < density).collect();
        let max = positive_max(&values);
        assert_same(dims, &mask, &values, &[max / 100.0, max / 7.0, max / 250.0], &mut ws, &format!("trial {trial}"));
    }
}

#[test]
fn fast_equals_reference_on_plateaus_and_level_ties() {
    let mut rng = Rng(12);
    let mut ws = Workspace::new();
    let dims = [9, 7, 6];
    let n: usize = dims.iter().product();
    let mask = vec![true; n];
    // Levels accumulated in f32 as FSL forms them; values exactly on them.
    let dh = 0.1f32;
    let mut levels = vec![0.0f32];
    for _ in 0..30 {
        let next = levels.last().unwrap() + dh;
        levels.push(next);
    }
    let on_levels: Vec<f32> = (0..n).map(|_| levels[rng.below(levels.len())]).collect();
    assert_same(dims, &mask, &on_levels, &[dh, 2.0 * dh], &mut ws, "values on the levels");
    // Plateaus: a few distinct values in large connected blocks.
    let plateaus: Vec<f32> = (0..n).map(|i| [0.5f32, 1.0, 1.0, 2.0][(i / 20) % 4]).collect();
    assert_same(dims, &mask, &plateaus, &[0.02, 0.5, 1.0], &mut ws, "plateaus");
    // The maximum on a level boundary (dh = max/100, the observed map's own step).
    let mut v = smooth_values(&mut rng, dims, 2);
    let max = positive_max(&v);
    let dh_obs = max / 100.0;
    let k_max = *levels.last().unwrap();
    for x in v.iter_mut() {
        if *x > 0.9 * max {
            *x = k_max;
        }
    }
    assert_same(dims, &mask, &v, &[dh_obs, k_max / 30.0], &mut ws, "maxima tied on a level");
}

#[test]
fn fast_equals_reference_on_degenerate_maps() {
    let mut ws = Workspace::new();
    let dims = [4, 3, 3];
    let n: usize = dims.iter().product();
    let full = vec![true; n];
    // Everything at or below the first level (0 < T <= dh): only level 0.
    let low: Vec<f32> = (0..n).map(|i| 0.05 + 0.001 * i as f32).collect();
    assert_same(dims, &full, &low, &[0.1, 0.09], &mut ws, "below the first level");
    // All negative, all zero: nothing enhanced.
    assert_same(dims, &full, &vec![-1.0; n], &[0.1], &mut ws, "all negative");
    assert_same(dims, &full, &vec![0.0; n], &[0.1], &mut ws, "all zero");
    // Non-finite values among finite ones, and non-finite steps.
    let mut odd: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 0.3 - 0.4).collect();
    odd[0] = f32::NAN;
    odd[5] = f32::INFINITY;
    odd[9] = f32::NEG_INFINITY;
    odd[17] = f32::MAX;
    assert_same(dims, &full, &odd, &[0.05, f32::NAN, 0.0, -1.0, f32::INFINITY], &mut ws, "non-finite");
    // A single voxel in the mask, and a single positive voxel in a full mask.
    let mut one = vec![false; n];
    one[n / 2] = true;
    assert_same(dims, &one, &vec![1.5; n], &[0.01, 1.0, 2.0], &mut ws, "one voxel");
    let mut spike = vec![-1.0; n];
    spike[7] = 3.0;
    assert_same(dims, &full, &spike, &[0.03], &mut ws, "one positive voxel");
    // Too many levels is the same error from both.
    assert_same(dims, &full, &odd, &[1e-9], &mut ws, "too many levels");
    // An empty mask.
    assert_same(dims, &vec![false; n], &low, &[0.1], &mut ws, "empty mask");
}
