//! Reusable buffers for the spatial statistics.
//!
//! The pipeline calls these functions once per permutation map, one workspace per worker
//! thread. Buffers grow to the largest mask seen and are then reused, so a call allocates
//! nothing beyond its returned vector (and the `_into`/`_max` variants not even that).

/// Scratch space shared by labelling, cluster statistics and TFCE.
#[derive(Default, Debug, Clone)]
pub struct Workspace {
    /// Union-find parent per voxel; `UNSEEN` marks voxels not (yet) above threshold.
    pub(crate) parent: Vec<u32>,
    /// Component size, meaningful at roots.
    pub(crate) size: Vec<u32>,
    /// TFCE: weighted union-find offsets (a voxel's value is the sum along its path to the
    /// root). Clusters: the component mass at roots.
    pub(crate) off: Vec<f64>,
    /// TFCE: per root, the height weight down to which its contribution has been added.
    pub(crate) top: Vec<f64>,
    /// Stepwise TFCE: the highest level each voxel reaches.
    pub(crate) level: Vec<u32>,
    /// Voxels in processing order.
    pub(crate) order: Vec<u32>,
    /// Voxels that started a new component (no processed neighbour when added).
    pub(crate) seeds: Vec<u32>,
    /// Path buffer for full path compression.
    pub(crate) stack: Vec<u32>,
    /// Radix sort keys and their scratch copy.
    pub(crate) keys: Vec<u64>,
    pub(crate) keys_tmp: Vec<u64>,
    /// Counting-sort histogram.
    pub(crate) hist: Vec<u32>,
    /// Stepwise TFCE: threshold of each level, and prefix sums of threshold^H.
    pub(crate) level_h: Vec<f32>,
    pub(crate) level_q: Vec<f64>,
    /// `size_pow[s] = s^E` for the `E` in `size_pow_e`, s = 0..=V.
    pub(crate) size_pow: Vec<f64>,
    size_pow_e: Option<f32>,
}

pub(crate) const UNSEEN: u32 = u32::MAX;

impl Workspace {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sizes the per-voxel buffers for `n` voxels and marks every voxel unseen.
    pub(crate) fn reset(&mut self, n: usize) {
        self.parent.clear();
        self.parent.resize(n, UNSEEN);
        if self.size.len() < n {
            self.size.resize(n, 0);
            self.off.resize(n, 0.0);
            self.top.resize(n, 0.0);
            self.level.resize(n, 0);
        }
        self.order.clear();
        self.seeds.clear();
    }

    /// Ensures `size_pow` holds s^E for s = 0..=n. Built once per (E, mask) and reused,
    /// so TFCE pays no `powf` per merge.
    pub(crate) fn prepare_size_pow(&mut self, n: usize, e: f32) {
        if self.size_pow_e == Some(e) && self.size_pow.len() > n {
            return;
        }
        let e64 = e as f64;
        self.size_pow = (0..=n).map(|s| pow_fast(s as f64, e64)).collect();
        self.size_pow_e = Some(e);
    }
}

/// `x^p` with exact shortcuts for the exponents TFCE uses (E = 0.5, 1; H + 1 = 3, 2).
#[inline]
pub(crate) fn pow_fast(x: f64, p: f64) -> f64 {
    if p == 0.5 {
        x.sqrt()
    } else if p == 1.0 {
        x
    } else if p == 2.0 {
        x * x
    } else if p == 3.0 {
        x * x * x
    } else {
        x.powf(p)
    }
}
