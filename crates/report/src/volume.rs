//! Volumes on their own grids, and the world-aligned display grid.

/// A 3D volume on its own grid: data x fastest (index = x + nx*(y + ny*z)); `affine` maps voxel
/// (i, j, k) to world mm (row-major 3x4, like the NIfTI sform).
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    pub dims: [usize; 3],
    pub affine: [[f64; 4]; 3],
    pub data: Vec<f32>,
}

impl Volume {
    /// The value at voxel (i, j, k); 0 outside the grid (or past the end of `data`).
    fn at(&self, i: usize, j: usize, k: usize) -> f32 {
        let [nx, ny, nz] = self.dims;
        if i >= nx || j >= ny || k >= nz {
            return 0.0;
        }
        self.data.get(i + nx * (j + ny * k)).copied().unwrap_or(0.0)
    }

    /// World mm of voxel (i, j, k) (fractional allowed).
    pub fn voxel_to_world(&self, v: [f64; 3]) -> [f64; 3] {
        apply(&self.affine, v)
    }

    /// The inverse of the affine (world mm to voxel), or `None` if it is singular.
    pub(crate) fn inverse_affine(&self) -> Option<[[f64; 4]; 3]> {
        let a = &self.affine;
        let det3 = |m: [[f64; 3]; 3]| {
            m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
                + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
        };
        let m = [[a[0][0], a[0][1], a[0][2]], [a[1][0], a[1][1], a[1][2]], [a[2][0], a[2][1], a[2][2]]];
        let det = det3(m);
        if det == 0.0 || !det.is_finite() {
            return None;
        }
        // inv[r][c] = cofactor(c, r) / det.
        let mut inv = [[0f64; 4]; 3];
        for (r, row) in inv.iter_mut().enumerate() {
            for (c, cell) in row.iter_mut().take(3).enumerate() {
                let (c1, c2) = ((c + 1) % 3, (c + 2) % 3);
                let (r1, r2) = ((r + 1) % 3, (r + 2) % 3);
                *cell = (m[c1][r1] * m[c2][r2] - m[c1][r2] * m[c2][r1]) / det;
            }
        }
        for row in &mut inv {
            row[3] = -(row[0] * a[0][3] + row[1] * a[1][3] + row[2] * a[2][3]);
        }
        Some(inv)
    }

    /// Voxel coordinates (fractional) of world point `mm`: the inverse affine. A singular
    /// affine gives NaN coordinates (which every sampler treats as outside).
    pub fn world_to_voxel(&self, mm: [f64; 3]) -> [f64; 3] {
        match self.inverse_affine() {
            Some(inv) => apply(&inv, mm),
            None => [f64::NAN; 3],
        }
    }

    /// Trilinear interpolation at world point `mm`. Points within half a voxel of the grid's
    /// outermost voxel centres take the edge value (clamped, like [`Volume::nearest`] covers
    /// them); points further out give 0.
    pub fn trilinear(&self, mm: [f64; 3]) -> f32 {
        self.trilinear_voxel(self.world_to_voxel(mm))
    }

    /// [`Volume::trilinear`] at voxel coordinates `v`.
    pub(crate) fn trilinear_voxel(&self, v: [f64; 3]) -> f32 {
        let mut lo = [0usize; 3];
        let mut frac = [0f64; 3];
        for ax in 0..3 {
            let n = self.dims[ax];
            let p = v[ax];
            if n == 0 || !(p >= -0.5 && p < n as f64 - 0.5) {
                return 0.0;
            }
            let p = p.clamp(0.0, (n - 1) as f64);
            let f = p.floor();
            lo[ax] = f as usize;
            frac[ax] = p - f;
        }
        let mut acc = 0f64;
        for corner in 0..8 {
            let mut w = 1f64;
            let mut idx = [0usize; 3];
            for ax in 0..3 {
                let up = (corner >> ax) & 1 == 1;
                w *= if up { frac[ax] } else { 1.0 - frac[ax] };
                idx[ax] = lo[ax] + usize::from(up);
            }
            if w != 0.0 {
                acc += w * f64::from(self.at(idx[0], idx[1], idx[2]));
            }
        }
        acc as f32
    }

    /// The value of the voxel whose centre is nearest to world point `mm` (ties round up);
    /// 0 outside the grid.
    pub fn nearest(&self, mm: [f64; 3]) -> f32 {
        self.nearest_voxel(self.world_to_voxel(mm))
    }

    /// [`Volume::nearest`] at voxel coordinates `v`.
    pub(crate) fn nearest_voxel(&self, v: [f64; 3]) -> f32 {
        let mut idx = [0usize; 3];
        for ax in 0..3 {
            let r = (v[ax] + 0.5).floor();
            if !(r >= 0.0 && r < self.dims[ax] as f64) {
                return 0.0;
            }
            idx[ax] = r as usize;
        }
        self.at(idx[0], idx[1], idx[2])
    }

    /// The length of each voxel axis in mm (column norms of the affine).
    pub fn voxel_sizes(&self) -> [f64; 3] {
        let a = &self.affine;
        std::array::from_fn(|c| (a[0][c].powi(2) + a[1][c].powi(2) + a[2][c].powi(2)).sqrt())
    }

    /// World-mm bounding box (min, max) of the voxel centres.
    pub fn world_bounds(&self) -> ([f64; 3], [f64; 3]) {
        let mut lo = [f64::INFINITY; 3];
        let mut hi = [f64::NEG_INFINITY; 3];
        for corner in 0..8 {
            let v: [f64; 3] =
                std::array::from_fn(
                    |ax| {
                        if (corner >> ax) & 1 == 1 {
                            self.dims[ax].saturating_sub(1) as f64
                        } else {
                            0.0
                        }
                    },
                );
            let w = self.voxel_to_world(v);
            for ax in 0..3 {
                lo[ax] = lo[ax].min(w[ax]);
                hi[ax] = hi[ax].max(w[ax]);
            }
        }
        (lo, hi)
    }
}

/// `m` (3x4) applied to point `p`.
pub(crate) fn apply(m: &[[f64; 4]; 3], p: [f64; 3]) -> [f64; 3] {
    std::array::from_fn(|r| m[r][0] * p[0] + m[r][1] * p[1] + m[r][2] * p[2] + m[r][3])
}

/// A volume with its inverse affine worked out once, for sampling many points.
pub(crate) struct Sampler<'a> {
    pub vol: &'a Volume,
    inv: Option<[[f64; 4]; 3]>,
}

impl<'a> Sampler<'a> {
    pub fn new(vol: &'a Volume) -> Sampler<'a> {
        Sampler { vol, inv: vol.inverse_affine() }
    }

    fn voxel(&self, mm: [f64; 3]) -> [f64; 3] {
        match &self.inv {
            Some(inv) => apply(inv, mm),
            None => [f64::NAN; 3],
        }
    }

    pub fn trilinear(&self, mm: [f64; 3]) -> f32 {
        self.vol.trilinear_voxel(self.voxel(mm))
    }

    pub fn nearest(&self, mm: [f64; 3]) -> f32 {
        self.vol.nearest_voxel(self.voxel(mm))
    }
}

/// World-aligned display grid: grid point (i, j, k) is world
/// `origin_mm + (i, j, k) * step_mm`. Pixel (a, b) (column, row; row 0 at the top) of an axial
/// slice at height z is world `(origin[0] + a*step, origin[1] + (size[1]-1-b)*step, z)`; a
/// coronal slice at y has `(origin[0] + a*step, y, origin[2] + (size[2]-1-b)*step)`; a sagittal
/// slice at x has `(x, origin[1] + (size[1]-1-a)*step, origin[2] + (size[2]-1-b)*step)`
/// (anterior on the left, as FSLeyes shows it).
#[derive(Debug, Clone, PartialEq)]
pub struct DisplayGrid {
    pub origin_mm: [f64; 3],
    pub step_mm: f64,
    pub size: [usize; 3],
}

impl DisplayGrid {
    /// The bounding box of `v`'s voxel centres in world mm, with step = the smallest voxel size
    /// of `v`.
    pub fn covering(v: &Volume) -> DisplayGrid {
        let (lo, hi) = v.world_bounds();
        let sizes = v.voxel_sizes();
        let mut step = sizes.iter().copied().fold(f64::INFINITY, f64::min);
        if !(step.is_finite() && step > 0.0) {
            step = 1.0;
        }
        let size = std::array::from_fn(|ax| {
            let ext = hi[ax] - lo[ax];
            if ext.is_finite() && ext > 0.0 {
                (ext / step + 1e-6).floor() as usize + 1
            } else {
                1
            }
        });
        let origin_mm = std::array::from_fn(|ax| if lo[ax].is_finite() { lo[ax] } else { 0.0 });
        DisplayGrid { origin_mm, step_mm: step, size }
    }

    /// World mm of grid point (i, j, k) (fractional allowed).
    pub fn world(&self, g: [f64; 3]) -> [f64; 3] {
        std::array::from_fn(|ax| self.origin_mm[ax] + g[ax] * self.step_mm)
    }

    /// The nearest grid index along `ax` of world coordinate `mm`, clamped to the grid.
    pub fn index(&self, ax: usize, mm: f64) -> usize {
        let g = ((mm - self.origin_mm[ax]) / self.step_mm).round();
        if g.is_nan() || g < 0.0 {
            0
        } else {
            (g as usize).min(self.size[ax].max(1) - 1)
        }
    }

    /// (column, row with 0 at the top) of world point `mm` within one axial tile, in display
    /// voxels (multiply by the layout's `scale` for picture pixels); clamped to the tile.
    pub fn axial_pixel(&self, mm: [f64; 3]) -> (usize, usize) {
        (self.index(0, mm[0]), self.size[1].max(1) - 1 - self.index(1, mm[1]))
    }
}
