//! The adjacency graph of in-mask voxels.
//!
//! Every spatial statistic works on maps indexed by in-mask voxel (length V), so the
//! neighbourhood is precomputed once per mask over 0..V. Rows have a fixed width (the
//! connectivity's neighbour count, padded with V, an index no map holds), so the row of
//! voxel v starts at v × width: TFCE visits voxels in value order, effectively at random,
//! and a fixed-width row costs one cache miss and no row-start lookup. Each voxel's real
//! neighbours come first and ascending, which lets a scan in index order visit only the
//! "backward" neighbours (those already scanned) and stop at the first forward one.

/// Which voxels touch: 6 (faces), 18 (faces and edges) or 26 (faces, edges and corners).
///
/// randomise uses 6 for TFCE by default (26 with `--T2`) and 26 for cluster inference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Connectivity {
    #[default]
    C6,
    C18,
    C26,
}

impl Connectivity {
    /// From the neighbour count users type (6, 18 or 26).
    pub fn from_count(n: u32) -> Option<Self> {
        match n {
            6 => Some(Self::C6),
            18 => Some(Self::C18),
            26 => Some(Self::C26),
            _ => None,
        }
    }

    /// The number of neighbours of an interior voxel.
    pub fn count(self) -> u32 {
        match self {
            Self::C6 => 6,
            Self::C18 => 18,
            Self::C26 => 26,
        }
    }

    /// Largest squared offset length that still counts as touching: a face neighbour is at
    /// squared distance 1, an edge neighbour at 2, a corner neighbour at 3.
    fn max_squared_offset(self) -> i64 {
        match self {
            Self::C6 => 1,
            Self::C18 => 2,
            Self::C26 => 3,
        }
    }

    /// The offsets (dx, dy, dz) of the neighbours, in lexicographic (dz, dy, dx) order.
    pub fn offsets(self) -> Vec<[i64; 3]> {
        let lim = self.max_squared_offset();
        let mut out = Vec::with_capacity(26);
        for dz in -1i64..=1 {
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let d2 = dx * dx + dy * dy + dz * dz;
                    if d2 >= 1 && d2 <= lim {
                        out.push([dx, dy, dz]);
                    }
                }
            }
        }
        out
    }
}

/// Marks a grid position outside the mask in a dense grid-to-voxel lookup.
pub(crate) const OUTSIDE: u32 = u32::MAX;

/// First entry of the neighbour row of a voxel that TFCE leaves out (see
/// [`MaskGraph::without_grid_border`]); the kernels read it there. Larger than any voxel
/// index and than the padding V, so a scan of the row stops at once.
pub const EXCLUDED_ROW: u32 = u32::MAX;

/// In-mask voxels of a 3-D grid and which of them touch.
#[derive(Clone, Debug)]
pub struct MaskGraph {
    /// Grid size (nx, ny, nz).
    pub dims: [usize; 3],
    /// Linear grid indices `x + nx*(y + ny*z)` of the in-mask voxels, strictly ascending.
    /// Position in this vector is the voxel index every map uses.
    pub voxels: Vec<u32>,
    /// Neighbour rows of `width` entries: the in-mask indices of voxel v's neighbours,
    /// ascending, then the padding value V.
    nbrs: Vec<u32>,
    /// Number of real neighbours of each voxel.
    degree: Vec<u8>,
    width: usize,
    conn: Connectivity,
    /// Voxels that take no part in TFCE (empty: none); their rows start with
    /// [`EXCLUDED_ROW`] and no row names them.
    excluded: Vec<bool>,
}

impl MaskGraph {
    /// Builds the graph. Panics when `voxels` is not strictly ascending or holds an index
    /// outside the grid: both are programming errors in the caller, not data errors.
    pub fn new(dims: [usize; 3], voxels: Vec<u32>, conn: Connectivity) -> Self {
        let [nx, ny, nz] = dims;
        let n_grid = nx * ny * nz;
        assert!(n_grid <= OUTSIDE as usize, "grid too large for u32 indices");
        assert!(voxels.windows(2).all(|w| w[0] < w[1]), "MaskGraph::new: voxel indices must be strictly ascending");
        if let Some(&last) = voxels.last() {
            assert!((last as usize) < n_grid, "MaskGraph::new: voxel index outside the grid");
        }
        let lookup = dense_lookup(n_grid, &voxels);
        let steps = conn.offsets();

        let width = steps.len();
        let pad = voxels.len() as u32;
        let mut nbrs = Vec::with_capacity(voxels.len() * width);
        let mut degree = Vec::with_capacity(voxels.len());
        for &lin in &voxels {
            let [x, y, z] = unravel(lin as usize, dims);
            let row_start = nbrs.len();
            for &[dx, dy, dz] in &steps {
                let (qx, qy, qz) = (x as i64 + dx, y as i64 + dy, z as i64 + dz);
                if qx < 0 || qy < 0 || qz < 0 || qx >= nx as i64 || qy >= ny as i64 || qz >= nz as i64 {
                    continue;
                }
                let q = qx as usize + nx * (qy as usize + ny * qz as usize);
                let u = lookup[q];
                if u != OUTSIDE {
                    nbrs.push(u);
                }
            }
            nbrs[row_start..].sort_unstable();
            degree.push((nbrs.len() - row_start) as u8);
            nbrs.resize(row_start + width, pad);
        }
        Self { dims, voxels, nbrs, degree, width, conn, excluded: Vec::new() }
    }

    /// This graph with the outermost voxel layer of the grid (x = 0 and nx - 1, likewise y
    /// and z) left out, as randomise's TFCE (`tfce()` in FSL's newimagefns.h) visits only
    /// x = 1..nx-2: those voxels get TFCE 0 and join no component, so they also split the
    /// components they would have joined. Axes shorter than 3 voxels (where randomise
    /// refuses TFCE) keep all their layers. Cluster inference keeps the whole grid.
    pub fn without_grid_border(&self) -> MaskGraph {
        let on_border = |v: usize| {
            let c = self.coords(v);
            (0..3).any(|a| self.dims[a] >= 3 && (c[a] == 0 || c[a] == self.dims[a] - 1))
        };
        let excluded: Vec<bool> = (0..self.len()).map(on_border).collect();
        if !excluded.iter().any(|&e| e) {
            return self.clone();
        }
        let pad = self.len() as u32;
        let mut nbrs = Vec::with_capacity(self.nbrs.len());
        let mut degree = Vec::with_capacity(self.len());
        for (v, &out) in excluded.iter().enumerate() {
            let start = nbrs.len();
            if out {
                nbrs.push(EXCLUDED_ROW);
            } else {
                nbrs.extend(self.neighbours(v).iter().copied().filter(|&u| !excluded[u as usize]));
            }
            degree.push(if out { 0 } else { (nbrs.len() - start) as u8 });
            nbrs.resize(start + self.width, pad);
        }
        MaskGraph { nbrs, degree, excluded, ..self.clone() }
    }

    /// Whether TFCE leaves voxel `v` out (see [`MaskGraph::without_grid_border`]).
    #[inline]
    pub fn is_excluded(&self, v: usize) -> bool {
        self.excluded.get(v).copied().unwrap_or(false)
    }

    /// Whether TFCE leaves any voxel out.
    pub fn excludes_any(&self) -> bool {
        !self.excluded.is_empty()
    }

    /// Builds the graph from a dense boolean mask of `nx*ny*nz` entries (x fastest).
    pub fn from_mask(dims: [usize; 3], mask: &[bool], conn: Connectivity) -> Self {
        assert_eq!(mask.len(), dims[0] * dims[1] * dims[2], "mask length must match dims");
        let voxels = mask.iter().enumerate().filter(|(_, &m)| m).map(|(i, _)| i as u32).collect();
        Self::new(dims, voxels, conn)
    }

    /// Number of in-mask voxels V.
    pub fn len(&self) -> usize {
        self.voxels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.voxels.is_empty()
    }

    pub fn connectivity(&self) -> Connectivity {
        self.conn
    }

    /// In-mask neighbours of voxel `v`, ascending.
    #[inline]
    pub fn neighbours(&self, v: usize) -> &[u32] {
        let start = v * self.width;
        &self.nbrs[start..start + self.degree[v] as usize]
    }

    /// All neighbour rows (`width` entries per voxel, padded with V; the row of an excluded
    /// voxel starts with [`EXCLUDED_ROW`]) and the width.
    #[inline]
    pub fn padded_rows(&self) -> (&[u32], usize) {
        (&self.nbrs, self.width)
    }

    /// Grid coordinates (x, y, z) of in-mask voxel `v`.
    pub fn coords(&self, v: usize) -> [usize; 3] {
        unravel(self.voxels[v] as usize, self.dims)
    }

    /// Dense grid -> in-mask voxel index (OUTSIDE where not in the mask).
    pub(crate) fn grid_lookup(&self) -> Vec<u32> {
        dense_lookup(self.dims.iter().product(), &self.voxels)
    }
}

fn dense_lookup(n_grid: usize, voxels: &[u32]) -> Vec<u32> {
    let mut lookup = vec![OUTSIDE; n_grid];
    for (i, &lin) in voxels.iter().enumerate() {
        lookup[lin as usize] = i as u32;
    }
    lookup
}

pub(crate) fn unravel(lin: usize, dims: [usize; 3]) -> [usize; 3] {
    let x = lin % dims[0];
    let yz = lin / dims[0];
    [x, yz % dims[1], yz / dims[1]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbour_counts_in_a_full_cube() {
        let dims = [3, 3, 3];
        for (conn, n) in [(Connectivity::C6, 6), (Connectivity::C18, 18), (Connectivity::C26, 26)] {
            let g = MaskGraph::from_mask(dims, &[true; 27], conn);
            assert_eq!(g.neighbours(13).len(), n, "centre voxel, {conn:?}");
            // A corner voxel of the cube has 3 face, 3 edge and 1 corner neighbour.
            let corner = match conn {
                Connectivity::C6 => 3,
                Connectivity::C18 => 6,
                Connectivity::C26 => 7,
            };
            assert_eq!(g.neighbours(0).len(), corner, "corner voxel, {conn:?}");
            assert!(g.neighbours(13).windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn neighbours_are_in_mask_indices() {
        // Two voxels of a 4x1x1 line, grid positions 1 and 2: in-mask indices 0 and 1.
        let g = MaskGraph::new([4, 1, 1], vec![1, 2], Connectivity::C6);
        assert_eq!(g.neighbours(0), &[1]);
        assert_eq!(g.neighbours(1), &[0]);
        assert_eq!(g.coords(1), [2, 0, 0]);
    }

    #[test]
    #[should_panic(expected = "ascending")]
    fn rejects_unsorted_voxels() {
        MaskGraph::new([4, 1, 1], vec![2, 1], Connectivity::C6);
    }
}
