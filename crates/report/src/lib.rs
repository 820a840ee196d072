//! The picture-making primitives of voxflip's HTML report.
//!
//! Everything here works in memory: the caller passes volumes in (read by voxflip-io or made in
//! a test) and gets PNG bytes ([`Png`]) or SVG text back. Volumes live on their own voxel grids;
//! every picture is resampled *through the affines* onto one world-aligned [`DisplayGrid`], so a
//! 2 mm statistic map on a 1 mm background with a different affine lines up.
//!
//! Display convention (the FSLeyes default for MNI data, i.e. neurological): world x increases
//! to the right of the picture in axial and coronal views, anterior is up in axial views,
//! superior is up in sagittal and coronal views; sagittal views show anterior on the left.

mod design;
mod hist;
mod render;
mod volume;

pub use design::{design_matrix, design_row_px, DESIGN_COLUMN_PX, DESIGN_GAP_COLOUR, DESIGN_GAP_PX, DESIGN_GROUP_PX};
pub use hist::{null_histogram_svg, Bins};
pub use render::{
    colour_bar_svg, display_scale, glass_brain, mosaic, mosaic_at, orthogonal, overlay_colour, MosaicLayout, Overlay,
};
pub use volume::{DisplayGrid, Volume};

use base64::Engine as _;

/// An encoded PNG image (RGB8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Png(pub Vec<u8>);

impl Png {
    /// The image as a `data:image/png;base64,...` URI, for an `<img src=...>`.
    pub fn data_uri(&self) -> String {
        format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

/// An RGB8 picture being drawn.
#[derive(Debug, Clone)]
pub(crate) struct Image {
    pub w: usize,
    pub h: usize,
    pub rgb: Vec<u8>,
}

impl Image {
    pub fn new(w: usize, h: usize, fill: [u8; 3]) -> Image {
        let (w, h) = (w.max(1), h.max(1));
        let mut rgb = Vec::with_capacity(w * h * 3);
        for _ in 0..w * h {
            rgb.extend_from_slice(&fill);
        }
        Image { w, h, rgb }
    }

    pub fn set(&mut self, x: usize, y: usize, c: [u8; 3]) {
        if x < self.w && y < self.h {
            let o = (y * self.w + x) * 3;
            self.rgb[o..o + 3].copy_from_slice(&c);
        }
    }

    /// Fills the `scale` x `scale` block of display voxel (a, b).
    pub fn block(&mut self, a: usize, b: usize, scale: usize, c: [u8; 3]) {
        for y in b * scale..(b + 1) * scale {
            for x in a * scale..(a + 1) * scale {
                self.set(x, y, c);
            }
        }
    }

    /// Copies `src` with its top-left corner at (x0, y0), clipped.
    pub fn blit(&mut self, src: &Image, x0: usize, y0: usize) {
        for y in 0..src.h {
            for x in 0..src.w {
                let o = (y * src.w + x) * 3;
                self.set(x0 + x, y0 + y, [src.rgb[o], src.rgb[o + 1], src.rgb[o + 2]]);
            }
        }
    }

    pub fn encode(&self) -> Png {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.w as u32, self.h as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_compression(png::Compression::Best);
            enc.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
            // Writing a non-empty RGB8 image into memory cannot fail.
            let mut writer = enc.write_header().expect("PNG header into memory");
            writer.write_image_data(&self.rgb).expect("PNG data into memory");
        }
        Png(out)
    }
}

#[cfg(test)]
mod tests;
