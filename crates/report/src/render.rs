//! Slice mosaics, orthogonal views, glass brains and the colour bar.

use crate::volume::{DisplayGrid, Sampler, Volume};
use crate::{Image, Png};

/// A statistic map drawn over a background.
#[derive(Debug, Clone, Copy)]
pub struct Overlay<'a> {
    /// The statistic, resampled trilinear.
    pub values: &'a Volume,
    /// Nonzero = significant (drawn); resampled nearest.
    pub shown: &'a Volume,
    /// The colour scale lo..hi (of |value|), e.g. threshold..max.
    pub range: (f32, f32),
}

/// Where the tiles of a [`mosaic`] are.
#[derive(Debug, Clone, PartialEq)]
pub struct MosaicLayout {
    /// World z (mm) of each tile, in order (left to right, top to bottom).
    pub slices_mm: Vec<f64>,
    /// Tiles per row of the picture.
    pub columns: usize,
    /// (width, height) of one tile in pixels.
    pub tile: (usize, usize),
    /// Pixels per display voxel.
    pub scale: usize,
}

/// The most tiles in one row of a mosaic.
const MOSAIC_COLUMNS: usize = 6;
/// The width a tile aims at, in pixels.
const TILE_WIDTH: usize = 200;
const CROSSHAIR: [u8; 3] = [0, 220, 0];
const GLASS_BRAIN: [u8; 3] = [210, 210, 210];
const WHITE: [u8; 3] = [255, 255, 255];
const BLACK: [u8; 3] = [0, 0, 0];

/// The colour of statistic value `v` on the report's map: "hot" (red at `range.0` to yellow at
/// `range.1`) for v >= 0, "cool" (blue to cyan, on |v|) for v < 0. Values outside the range
/// clamp to its ends; an empty range (hi <= lo) gives the top colour.
pub fn overlay_colour(v: f32, range: (f32, f32)) -> [u8; 3] {
    let (lo, hi) = range;
    let t = if hi > lo { ((v.abs() - lo) / (hi - lo)).clamp(0.0, 1.0) } else { 1.0 };
    let t = if t.is_nan() { 1.0 } else { t };
    let g = (255.0 * t).round() as u8;
    if v < 0.0 {
        [0, g, 255]
    } else {
        [255, g, 0]
    }
}

/// The three slice orientations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plane {
    Sagittal,
    Coronal,
    Axial,
}

impl Plane {
    /// The world axis a slice of this plane is fixed along.
    fn normal(self) -> usize {
        match self {
            Plane::Sagittal => 0,
            Plane::Coronal => 1,
            Plane::Axial => 2,
        }
    }

    /// (columns, rows) of a slice, in display voxels.
    fn dims(self, g: &DisplayGrid) -> (usize, usize) {
        let s = g.size.map(|n| n.max(1));
        match self {
            Plane::Sagittal => (s[1], s[2]),
            Plane::Coronal => (s[0], s[2]),
            Plane::Axial => (s[0], s[1]),
        }
    }

    /// World mm of display voxel (a, b) (row 0 at the top) of the slice at `fixed` mm.
    fn world(self, g: &DisplayGrid, a: usize, b: usize, fixed: f64) -> [f64; 3] {
        let (cols, rows) = self.dims(g);
        let (o, st) = (g.origin_mm, g.step_mm);
        // Rows count down from the top: superior (sagittal, coronal) or anterior (axial).
        let up = rows - 1 - b;
        match self {
            Plane::Sagittal => [fixed, o_plus(o, st, 1, cols - 1 - a), o_plus(o, st, 2, up)],
            Plane::Coronal => [o_plus(o, st, 0, a), fixed, o_plus(o, st, 2, up)],
            Plane::Axial => [o_plus(o, st, 0, a), o_plus(o, st, 1, up), fixed],
        }
    }

    /// Display voxel (a, b) of world point `mm` in a slice of this plane, clamped.
    fn pixel(self, g: &DisplayGrid, mm: [f64; 3]) -> (usize, usize) {
        let (cols, rows) = self.dims(g);
        match self {
            Plane::Sagittal => (cols - 1 - g.index(1, mm[1]), rows - 1 - g.index(2, mm[2])),
            Plane::Coronal => (g.index(0, mm[0]), rows - 1 - g.index(2, mm[2])),
            Plane::Axial => g.axial_pixel(mm),
        }
    }
}

/// World mm of grid index `i` along axis `ax`.
fn o_plus(o: [f64; 3], step: f64, ax: usize, i: usize) -> f64 {
    o[ax] + i as f64 * step
}

/// The background's grey window: the 2nd..98th percentile of its nonzero finite voxels,
/// from 0 instead for an image with no negative values (a T1, a mean of positive images),
/// so that its darkest tissue stays grey rather than as black as the outside.
struct Window {
    lo: f32,
    hi: f32,
}

impl Window {
    fn of(v: &Volume) -> Window {
        let mut vals: Vec<f32> = v.data.iter().copied().filter(|x| x.is_finite() && *x != 0.0).collect();
        if vals.is_empty() {
            return Window { lo: 0.0, hi: 1.0 };
        }
        vals.sort_unstable_by(f32::total_cmp);
        let at = |q: f64| vals[((vals.len() - 1) as f64 * q).round() as usize];
        let (lo, hi) = (if vals[0] >= 0.0 { 0.0 } else { at(0.02) }, at(0.98));
        if hi > lo {
            Window { lo, hi }
        } else if lo > 0.0 {
            Window { lo: 0.0, hi: lo }
        } else {
            Window { lo, hi: 0.0 }
        }
    }

    fn grey(&self, v: f32) -> [u8; 3] {
        let t = ((v - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0);
        let t = if t.is_nan() { 0.0 } else { t };
        let g = (255.0 * t).round() as u8;
        [g, g, g]
    }
}

/// Everything needed to colour one display point.
struct Painter<'a> {
    bg: Sampler<'a>,
    window: Window,
    overlay: Option<(Sampler<'a>, Sampler<'a>, (f32, f32))>,
}

impl<'a> Painter<'a> {
    fn new(background: &'a Volume, overlay: Option<&Overlay<'a>>) -> Painter<'a> {
        Painter {
            bg: Sampler::new(background),
            window: Window::of(background),
            overlay: overlay.map(|o| (Sampler::new(o.values), Sampler::new(o.shown), o.range)),
        }
    }

    fn colour(&self, mm: [f64; 3]) -> [u8; 3] {
        if let Some((values, shown, range)) = &self.overlay {
            if is_shown(shown.nearest(mm)) {
                let v = values.trilinear(mm);
                if v.is_finite() {
                    return overlay_colour(v, *range);
                }
            }
        }
        self.window.grey(self.bg.trilinear(mm))
    }

    fn slice(&self, g: &DisplayGrid, plane: Plane, fixed: f64, scale: usize) -> Image {
        let (cols, rows) = plane.dims(g);
        let mut img = Image::new(cols * scale, rows * scale, BLACK);
        for b in 0..rows {
            for a in 0..cols {
                img.block(a, b, scale, self.colour(plane.world(g, a, b, fixed)));
            }
        }
        img
    }
}

fn is_shown(s: f32) -> bool {
    s != 0.0 && !s.is_nan()
}

/// Pixels per display voxel for `grid`: an axial tile about 200 px wide, at least 1.
pub fn display_scale(grid: &DisplayGrid) -> usize {
    let cols = grid.size[0].max(1);
    ((TILE_WIDTH as f64 / cols as f64).round() as usize).max(1)
}

/// World z range (min, max) of the centres of `v`'s nonzero finite voxels.
fn nonzero_z_range(v: &Volume) -> Option<(f64, f64)> {
    let [nx, ny, nz] = v.dims;
    let a = &v.affine[2];
    let mut range: Option<(f64, f64)> = None;
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                let x = v.data.get(i + nx * (j + ny * k)).copied().unwrap_or(0.0);
                if x != 0.0 && x.is_finite() {
                    let z = a[0] * i as f64 + a[1] * j as f64 + a[2] * k as f64 + a[3];
                    range = Some(match range {
                        Some((lo, hi)) => (lo.min(z), hi.max(z)),
                        None => (z, z),
                    });
                }
            }
        }
    }
    range
}

/// Axial slices of `background` (with `overlay` on top), `n_slices` of them evenly spaced over
/// the z range where the background (or the overlay's `shown`) is nonzero, each snapped to a
/// plane of `grid`; tiles left to right, top to bottom.
pub fn mosaic(
    background: &Volume,
    overlay: Option<&Overlay>,
    grid: &DisplayGrid,
    n_slices: usize,
) -> (Png, MosaicLayout) {
    let mut range = nonzero_z_range(background);
    if let Some(o) = overlay {
        if let Some((lo, hi)) = nonzero_z_range(o.shown) {
            range = Some(match range {
                Some((l, h)) => (l.min(lo), h.max(hi)),
                None => (lo, hi),
            });
        }
    }
    let (zlo, zhi) = range.unwrap_or_else(|| {
        let top = grid.world([0.0, 0.0, grid.size[2].saturating_sub(1) as f64])[2];
        (grid.origin_mm[2], top)
    });
    let slices: Vec<f64> = (0..n_slices)
        .map(|i| {
            let z = zlo + (i as f64 + 0.5) / n_slices as f64 * (zhi - zlo);
            grid.world([0.0, 0.0, grid.index(2, z) as f64])[2]
        })
        .collect();
    mosaic_at(background, overlay, grid, &slices)
}

/// [`mosaic`] with the tiles' world z (mm) given: one axial tile per entry of `slices_mm`.
pub fn mosaic_at(
    background: &Volume,
    overlay: Option<&Overlay>,
    grid: &DisplayGrid,
    slices_mm: &[f64],
) -> (Png, MosaicLayout) {
    let painter = Painter::new(background, overlay);
    let scale = display_scale(grid);
    let (cols, rows) = Plane::Axial.dims(grid);
    let tile = (cols * scale, rows * scale);
    let columns = slices_mm.len().clamp(1, MOSAIC_COLUMNS);
    let tile_rows = slices_mm.len().div_ceil(columns);
    let mut img = Image::new(columns * tile.0, tile_rows * tile.1, BLACK);
    for (n, &z) in slices_mm.iter().enumerate() {
        let t = painter.slice(grid, Plane::Axial, z, scale);
        img.blit(&t, (n % columns) * tile.0, (n / columns) * tile.1);
    }
    let layout = MosaicLayout { slices_mm: slices_mm.to_vec(), columns, tile, scale };
    (img.encode(), layout)
}

/// Sagittal | coronal | axial slices through `at_mm`, side by side (top-aligned, black
/// between), each with a thin crosshair at `at_mm`. Panel widths are the grid's y, x and x
/// extents times [`display_scale`]; the height is the tallest panel.
pub fn orthogonal(background: &Volume, overlay: Option<&Overlay>, grid: &DisplayGrid, at_mm: [f64; 3]) -> Png {
    let painter = Painter::new(background, overlay);
    let scale = display_scale(grid);
    let panels: Vec<Image> = [Plane::Sagittal, Plane::Coronal, Plane::Axial]
        .into_iter()
        .map(|plane| {
            let mut img = painter.slice(grid, plane, at_mm[plane.normal()], scale);
            let (a, b) = plane.pixel(grid, at_mm);
            let (x, y) = (a * scale + scale / 2, b * scale + scale / 2);
            for yy in 0..img.h {
                img.set(x, yy, CROSSHAIR);
            }
            for xx in 0..img.w {
                img.set(xx, y, CROSSHAIR);
            }
            img
        })
        .collect();
    side_by_side(&panels, BLACK).encode()
}

fn side_by_side(panels: &[Image], fill: [u8; 3]) -> Image {
    let w = panels.iter().map(|p| p.w).sum();
    let h = panels.iter().map(|p| p.h).max().unwrap_or(1);
    let mut img = Image::new(w, h, fill);
    let mut x = 0;
    for p in panels {
        img.blit(p, x, 0);
        x += p.w;
    }
    img
}

/// Maximum-intensity projections in three views (sagittal | coronal | axial, laid out as in
/// [`orthogonal`]): the brain silhouette (`outline` nonzero anywhere along the ray) light grey
/// on white, and where the overlay is shown anywhere along the ray, the value of largest |value|
/// among the shown points, colour-mapped.
pub fn glass_brain(outline: &Volume, overlay: &Overlay, grid: &DisplayGrid) -> Png {
    let outline = Sampler::new(outline);
    let values = Sampler::new(overlay.values);
    let shown = Sampler::new(overlay.shown);
    let scale = display_scale(grid);
    let panels: Vec<Image> = [Plane::Sagittal, Plane::Coronal, Plane::Axial]
        .into_iter()
        .map(|plane| {
            let (cols, rows) = plane.dims(grid);
            let depth = grid.size[plane.normal()].max(1);
            let mut img = Image::new(cols * scale, rows * scale, WHITE);
            for b in 0..rows {
                for a in 0..cols {
                    let mut brain = false;
                    let mut best: Option<f32> = None;
                    for t in 0..depth {
                        let fixed = grid.origin_mm[plane.normal()] + t as f64 * grid.step_mm;
                        let mm = plane.world(grid, a, b, fixed);
                        if !brain && is_shown(outline.nearest(mm)) {
                            brain = true;
                        }
                        if is_shown(shown.nearest(mm)) {
                            let v = values.trilinear(mm);
                            if v.is_finite() && best.is_none_or(|b| v.abs() > b.abs()) {
                                best = Some(v);
                            }
                        }
                    }
                    let c = match best {
                        Some(v) => overlay_colour(v, overlay.range),
                        None if brain => GLASS_BRAIN,
                        None => WHITE,
                    };
                    img.block(a, b, scale, c);
                }
            }
            img
        })
        .collect();
    side_by_side(&panels, WHITE).encode()
}

/// A number for a label: 2 decimals in the usual range, scientific beyond it.
pub(crate) fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        format!("{v}")
    } else if v != 0.0 && (v.abs() >= 1e4 || v.abs() < 1e-2) {
        format!("{v:.2e}")
    } else {
        format!("{v:.2}")
    }
}

/// `s` with the XML special characters escaped.
pub(crate) fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            _ => out.push(c),
        }
    }
    out
}

/// A horizontal gradient bar (SVG, 320x56) of the overlay's "hot" map from `lo` (red) to `hi`
/// (yellow), ticks at both ends labelled with their values, and `label` under it.
pub fn colour_bar_svg(lo: f32, hi: f32, label: &str) -> String {
    let [r0, g0, b0] = overlay_colour(0.0, (0.0, 1.0));
    let [r1, g1, b1] = overlay_colour(1.0, (0.0, 1.0));
    let (x0, x1) = (20, 300);
    format!(
        concat!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="320" height="56" viewBox="0 0 320 56">"#,
            r#"<defs><linearGradient id="voxflip-hot" x1="0" y1="0" x2="1" y2="0">"#,
            r#"<stop offset="0" stop-color="rgb({r0},{g0},{b0})"/>"#,
            r#"<stop offset="1" stop-color="rgb({r1},{g1},{b1})"/></linearGradient></defs>"#,
            r##"<rect x="{x0}" y="4" width="{w}" height="16" fill="url(#voxflip-hot)" stroke="#000" stroke-width="0.5"/>"##,
            r##"<line x1="{x0}" y1="20" x2="{x0}" y2="26" stroke="#000"/>"##,
            r##"<line x1="{x1}" y1="20" x2="{x1}" y2="26" stroke="#000"/>"##,
            r#"<g font-family="sans-serif" text-anchor="middle">"#,
            r#"<text x="{x0}" y="37" font-size="11">{lo}</text>"#,
            r#"<text x="{x1}" y="37" font-size="11">{hi}</text>"#,
            r#"<text x="160" y="51" font-size="12">{label}</text></g></svg>"#
        ),
        r0 = r0,
        g0 = g0,
        b0 = b0,
        r1 = r1,
        g1 = g1,
        b1 = b1,
        x0 = x0,
        x1 = x1,
        w = x1 - x0,
        lo = fmt_num(f64::from(lo)),
        hi = fmt_num(f64::from(hi)),
        label = xml_escape(label),
    )
}
