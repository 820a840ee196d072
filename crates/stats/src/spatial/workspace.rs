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
    /// The component mass, at roots.
    pub(crate) off: Vec<f64>,
    /// TFCE union-find nodes (one record per voxel so a find touches one cache line), and
    /// which voxels have been added (a byte per voxel stays in cache for the neighbour
    /// checks; nodes are only initialised when their voxel is added).
    pub(crate) nodes: Vec<Node>,
    pub(crate) added: Vec<bool>,
    /// The fast TFCE engine's union-find, split so the parent walk of `find` stays in a
    /// 4-byte-per-voxel array (about 1 MB at 2 mm, inside a core's L2): `tf_parent[v]` is
    /// `UNSEEN` until v is added (one extra entry, the row padding index, is never added);
    /// the offsets and the roots' data sit in `tf_nodes`.
    pub(crate) tf_parent: Vec<u32>,
    pub(crate) tf_nodes: Vec<TfNode>,
    /// The voxels added so far, a bit each (the padding index n included, never set).
    pub(crate) tf_added: Vec<u64>,
    /// The height weight of each voxel of `order`, in that order (read sequentially).
    pub(crate) order_w: Vec<f64>,
    /// Stepwise TFCE: where the voxels of level 0 (0 < T <= dh) start in `order`.
    pub(crate) level0_start: usize,
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

/// The fast TFCE engine's per-voxel record (its parent lives in `Workspace::tf_parent`).
#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct TfNode {
    /// Weighted union-find offset, as [`Node::off`].
    pub off: f64,
    /// At roots: as [`Node::top`].
    pub top: f64,
    /// Component size, meaningful at roots.
    pub size: u32,
}

/// A TFCE union-find node (the reference engine's).
#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct Node {
    pub parent: u32,
    /// Component size, meaningful at roots.
    pub size: u32,
    /// Weighted union-find offset: a voxel's value is the sum of `off` along its path to
    /// the root, root included.
    pub off: f64,
    /// At roots: the height weight down to which the component's contribution is added.
    pub top: f64,
}

impl Workspace {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sizes the labelling buffers for `n` voxels and marks every voxel unseen.
    pub(crate) fn reset_labels(&mut self, n: usize) {
        self.parent.clear();
        self.parent.resize(n, UNSEEN);
        if self.size.len() < n {
            self.size.resize(n, 0);
            self.off.resize(n, 0.0);
        }
    }

    /// Sizes the TFCE buffers for `n` voxels and marks every voxel not yet added. `added`
    /// has one more entry, for the neighbour-row padding index n, which is never added.
    pub(crate) fn reset_tfce_reference(&mut self, n: usize) {
        self.added.clear();
        self.added.resize(n + 1, false);
        if self.nodes.len() < n {
            self.nodes.resize(n, Node::default());
            self.level.resize(n, 0);
        }
        self.order.clear();
        self.seeds.clear();
    }

    /// Sizes the fast TFCE engine's buffers for `n` voxels, none of them added yet.
    pub(crate) fn reset_tfce(&mut self, n: usize) {
        self.tf_parent.clear();
        self.tf_parent.resize(n + 1, UNSEEN);
        self.tf_added.clear();
        self.tf_added.resize((n + 1).div_ceil(64), 0);
        if self.tf_nodes.len() < n {
            self.tf_nodes.resize(n, TfNode::default());
            self.level.resize(n, 0);
        }
        self.order.clear();
        self.order_w.clear();
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
pub fn pow_fast(x: f64, p: f64) -> f64 {
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
