//! The data matrix Y (N images x V in-mask voxels) and the grid it came from.
use crate::error::{Error, Result};
use crate::nifti::{Header, Image};
use std::path::{Path, PathBuf};

/// In-mask data, ready for the GLM.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Images (rows).
    pub n: usize,
    /// In-mask voxels (columns).
    pub v: usize,
    /// N x V, row-major: y[i * v + vox].
    pub y: Vec<f32>,
    pub dims: [usize; 3],
    /// Linear grid indices (x fastest) of the in-mask voxels, ascending.
    pub voxels: Vec<u32>,
    pub affine: [[f64; 4]; 3],
    pub pixdim: [f32; 3],
    /// Header outputs are written with (the input's sform/qform).
    pub reference: Header,
    /// Where the data came from, for messages.
    pub source: PathBuf,
    /// The mask image (-m), if one was given.
    pub mask_source: Option<PathBuf>,
    /// Seconds its reader took to read the files and form the dataset (for the sidecar's
    /// timings; 0 unless the reader sets it).
    pub read_seconds: f64,
    /// Voxels of the mask (-m) left out because they are constant across all images
    /// (randomise's rule; 0 without a mask or with `keep_constant`).
    pub constant_dropped: usize,
}

fn same_grid(a: &Image, b: &Image) -> bool {
    a.dims == b.dims && (0..3).all(|r| (0..4).all(|c| (a.affine[r][c] - b.affine[r][c]).abs() < 1e-3))
}

/// `10x12x8`.
fn dims_text(d: [usize; 3]) -> String {
    format!("{}x{}x{}", d[0], d[1], d[2])
}

/// A voxel-to-world affine on one line, its three rows: `[-2 0 0 90; 0 2 0 -126; 0 0 2 -72]`.
fn affine_text(a: &[[f64; 4]; 3]) -> String {
    let row =
        |r: &[f64; 4]| r.iter().map(|v| format!("{}", (v * 1e4).round() / 1e4 + 0.0)).collect::<Vec<_>>().join(" ");
    format!("[{}]", a.iter().map(row).collect::<Vec<_>>().join("; "))
}

fn voxel_xyz(dims: [usize; 3], lin: usize) -> (usize, usize, usize) {
    (lin % dims[0], (lin / dims[0]) % dims[1], lin / (dims[0] * dims[1]))
}

impl Dataset {
    /// [`Dataset::from_image_with`], constant voxels dropped (randomise's default).
    pub fn from_image(img: &Image, img_path: &Path, mask: Option<(&Image, &Path)>) -> Result<Dataset> {
        Self::from_image_with(img, img_path, mask, false)
    }

    /// Build from a 4D image and an optional mask image. "Constant" is randomise's test: every
    /// image holds exactly the first image's value (no tolerance, no demeaning). Without a
    /// mask, every finite voxel that is not constant is used (as randomise does); with a
    /// mask, every in-mask voxel must be finite (an error says which are not), and constant
    /// ones are left out and counted in [`Dataset::constant_dropped`]. `keep_constant`
    /// (randomise --norcmask) keeps constant voxels: their statistic is then 0 (see
    /// `ContrastModel::problem`).
    pub fn from_image_with(
        img: &Image,
        img_path: &Path,
        mask: Option<(&Image, &Path)>,
        keep_constant: bool,
    ) -> Result<Dataset> {
        let n = img.nvol;
        if n < 2 {
            return Err(Error::input(
                img_path,
                format!("has {} volume(s); a group analysis needs a 4D image with one volume per image", n),
            ));
        }
        let nvox = img.nvox();
        let varies = |lin: usize| -> (bool, bool) {
            let first = img.data[lin];
            let mut finite = first.is_finite();
            let mut differs = false;
            for t in 1..n {
                let x = img.data[t * nvox + lin];
                finite &= x.is_finite();
                differs |= x != first;
            }
            (finite, differs)
        };
        let mut constant_dropped = 0;
        let voxels: Vec<u32> = match mask {
            Some((m, mpath)) => {
                if m.nvol != 1 {
                    return Err(Error::input(mpath, format!("a mask must be 3D, this has {} volumes", m.nvol)));
                }
                if m.dims != img.dims {
                    return Err(Error::input(
                        mpath,
                        format!(
                            "mask grid {} does not match the data {} ({})",
                            dims_text(m.dims),
                            img_path.display(),
                            dims_text(img.dims)
                        ),
                    ));
                }
                if !same_grid(m, img) {
                    return Err(Error::input(
                        mpath,
                        format!(
                            "mask has the data's shape {} but another orientation: mask affine {}, data affine {} ({})",
                            dims_text(m.dims),
                            affine_text(&m.affine),
                            affine_text(&img.affine),
                            img_path.display()
                        ),
                    ));
                }
                let vox: Vec<u32> =
                    (0..nvox).filter(|&l| m.data[l].is_finite() && m.data[l] > 0.0).map(|l| l as u32).collect();
                if vox.is_empty() {
                    return Err(Error::input(mpath, "the mask is empty (no voxel > 0)"));
                }
                let mut nonfinite = (0usize, None);
                let mut constant = vec![false; vox.len()];
                for (c, &l) in constant.iter_mut().zip(&vox) {
                    let (finite, differs) = varies(l as usize);
                    if !finite {
                        nonfinite.0 += 1;
                        nonfinite.1.get_or_insert(l);
                    } else {
                        *c = !differs && !keep_constant;
                    }
                }
                if let (c, Some(l)) = nonfinite {
                    let (x, y, z) = voxel_xyz(img.dims, l as usize);
                    return Err(Error::input(
                        img_path,
                        format!("{c} in-mask voxels hold NaN or Inf (first at voxel {x},{y},{z}); fix the data or exclude them from {}", mpath.display()),
                    ));
                }
                constant_dropped = constant.iter().filter(|&&c| c).count();
                if constant_dropped == vox.len() {
                    return Err(Error::input(
                        img_path,
                        format!(
                            "every voxel of {} is constant across all {n} volumes: nothing to test",
                            mpath.display()
                        ),
                    ));
                }
                vox.into_iter().zip(&constant).filter(|(_, &c)| !c).map(|(l, _)| l).collect()
            }
            None => {
                let vox: Vec<u32> = (0..nvox)
                    .filter(|&l| {
                        let (f, d) = varies(l);
                        f && (d || keep_constant)
                    })
                    .map(|l| l as u32)
                    .collect();
                if vox.is_empty() {
                    return Err(Error::input(
                        img_path,
                        "no voxel varies across volumes (and none is finite and non-constant): nothing to test",
                    ));
                }
                vox
            }
        };
        let v = voxels.len();
        let mut y = vec![0f32; n * v];
        for i in 0..n {
            let vol = img.volume(i);
            let row = &mut y[i * v..(i + 1) * v];
            for (r, &l) in row.iter_mut().zip(&voxels) {
                *r = vol[l as usize];
            }
        }
        Ok(Dataset {
            n,
            v,
            y,
            dims: img.dims,
            voxels,
            affine: img.affine,
            pixdim: img.pixdim,
            reference: img.header.clone(),
            source: img_path.to_path_buf(),
            mask_source: mask.map(|(_, p)| p.to_path_buf()),
            read_seconds: 0.0,
            constant_dropped,
        })
    }

    /// The in-mask values of `img`, another 4D image of the data's rows (a voxelwise
    /// regressor, randomise --vxf), N x V row-major like `y`: it must have one volume per
    /// data image, the data's grid and orientation, and finite values in the mask.
    pub fn values_of(&self, img: &Image, img_path: &Path) -> Result<Vec<f32>> {
        if img.nvol != self.n {
            return Err(Error::input(
                img_path,
                format!(
                    "has {} volume(s) but the data {} has {} (one per design row)",
                    img.nvol,
                    self.source.display(),
                    self.n
                ),
            ));
        }
        if img.dims != self.dims || !(0..3).all(|r| (0..4).all(|c| (img.affine[r][c] - self.affine[r][c]).abs() < 1e-3))
        {
            return Err(Error::input(
                img_path,
                format!(
                    "grid {} affine {} does not match the data {} ({} affine {})",
                    dims_text(img.dims),
                    affine_text(&img.affine),
                    self.source.display(),
                    dims_text(self.dims),
                    affine_text(&self.affine)
                ),
            ));
        }
        let v = self.v;
        let mut out = vec![0f32; self.n * v];
        for i in 0..self.n {
            let vol = img.volume(i);
            for (o, &l) in out[i * v..(i + 1) * v].iter_mut().zip(&self.voxels) {
                *o = vol[l as usize];
            }
        }
        if let Some(k) = out.iter().position(|x| !x.is_finite()) {
            let (x, y, z) = voxel_xyz(self.dims, self.voxels[k % v] as usize);
            return Err(Error::input(
                img_path,
                format!("holds NaN or Inf in the mask (volume {}, voxel {x},{y},{z})", k / v),
            ));
        }
        Ok(out)
    }

    /// The mean of the images at each in-mask voxel, on the full grid (0 outside the mask).
    pub fn mean_image(&self) -> Vec<f32> {
        let mut sum = vec![0f64; self.v];
        for row in self.y.chunks_exact(self.v.max(1)) {
            for (s, &x) in sum.iter_mut().zip(row) {
                *s += x as f64;
            }
        }
        let mean: Vec<f32> = sum.iter().map(|&s| (s / self.n as f64) as f32).collect();
        self.expand(&mean)
    }

    /// Put in-mask values back on the full grid (0 outside the mask).
    pub fn expand(&self, values: &[f32]) -> Vec<f32> {
        let mut full = vec![0f32; self.dims[0] * self.dims[1] * self.dims[2]];
        for (&l, &x) in self.voxels.iter().zip(values) {
            full[l as usize] = x;
        }
        full
    }

    /// Volume of one voxel in mm^3.
    pub fn voxel_volume(&self) -> f64 {
        self.pixdim.iter().map(|&p| p.abs() as f64).product()
    }
}

/// Read one 3D image per path, several at once (each file's inflate is one stream unless
/// voxflip wrote it), and stack them in the order given ([`stack`]). An error names the
/// first file, in that order, that could not be read.
pub fn read_stack(paths: &[PathBuf]) -> Result<Image> {
    use rayon::prelude::*;
    let images: Vec<Result<Image>> = paths.par_iter().map(|p| crate::nifti::read_image(p)).collect();
    let images = images.into_iter().zip(paths).map(|(r, p)| r.map(|img| (img, p.clone()))).collect::<Result<_>>()?;
    stack(images)
}

/// Stack 3D images (one per subject) into one 4D image; all must share the first's grid.
pub fn stack(images: Vec<(Image, PathBuf)>) -> Result<Image> {
    let (first, _) = &images[0];
    let nvox = first.nvox();
    let mut data = Vec::with_capacity(nvox * images.len());
    for (img, path) in &images {
        if img.nvol != 1 {
            return Err(Error::input(path, format!("expected one 3D map per subject, found {} volumes", img.nvol)));
        }
        if !same_grid(img, first) {
            return Err(Error::input(path, format!("grid differs from {}", images[0].1.display())));
        }
        data.extend_from_slice(&img.data);
    }
    let mut out = first.clone();
    out.nvol = images.len();
    out.data = data;
    Ok(out)
}

/// post - pre, volume by volume; both must be on the same grid with the same count.
pub fn difference(pre: &Image, pre_path: &Path, post: &Image, post_path: &Path) -> Result<Image> {
    if !same_grid(pre, post) {
        return Err(Error::input(post_path, format!("grid differs from {}", pre_path.display())));
    }
    if pre.nvol != post.nvol {
        return Err(Error::input(
            post_path,
            format!("has {} volumes but {} has {}", post.nvol, pre_path.display(), pre.nvol),
        ));
    }
    let mut out = pre.clone();
    for (o, &b) in out.data.iter_mut().zip(&post.data) {
        *o = b - *o;
    }
    Ok(out)
}
