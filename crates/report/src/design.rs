//! The design matrix picture, as FSL's design.png.

use crate::{Image, Png};

/// Width of one regressor's column, in pixels.
pub const DESIGN_COLUMN_PX: usize = 20;
/// Width of the gap between columns (and after the group strip), in pixels.
pub const DESIGN_GAP_PX: usize = 2;
/// Width of the group strip on the left, in pixels.
pub const DESIGN_GROUP_PX: usize = 8;
/// The colour of the gaps (not a grey, so no column value is mistaken for it).
pub const DESIGN_GAP_COLOUR: [u8; 3] = [90, 110, 190];

/// Height of one row (image) for `n_rows` rows: about 400 px in all, at least 2 and at most 16
/// per row.
pub fn design_row_px(n_rows: usize) -> usize {
    (400 / n_rows.max(1)).clamp(2, 16)
}

/// Colours of the group strip, by `group % 10` (the matplotlib "tab10" palette).
const GROUP_COLOURS: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// The design matrix as a picture, like FSL's design.png: one column per regressor
/// ([`DESIGN_COLUMN_PX`] wide, [`DESIGN_GAP_PX`] gaps of [`DESIGN_GAP_COLOUR`] between them),
/// each column scaled to its own min..max in grey (black = min, white = max; a constant column
/// is white where nonzero, black where zero), one row of [`design_row_px`] px per image (row 0
/// at the top). Non-finite or missing entries are red. With `groups`, a
/// [`DESIGN_GROUP_PX`]-wide strip on the left (then a gap) has one colour per group value.
pub fn design_matrix(rows: &[Vec<f64>], groups: Option<&[usize]>) -> Png {
    let n = rows.len();
    let p = rows.iter().map(Vec::len).max().unwrap_or(0);
    let row_px = design_row_px(n);
    let left = if groups.is_some() { DESIGN_GROUP_PX + DESIGN_GAP_PX } else { 0 };
    let width = left + p * DESIGN_COLUMN_PX + p.saturating_sub(1) * DESIGN_GAP_PX;
    let mut img = Image::new(width, n * row_px, DESIGN_GAP_COLOUR);
    let fill = |img: &mut Image, x0: usize, w: usize, r: usize, c: [u8; 3]| {
        for y in r * row_px..(r + 1) * row_px {
            for x in x0..x0 + w {
                img.set(x, y, c);
            }
        }
    };
    if let Some(groups) = groups {
        for r in 0..n {
            let c = groups.get(r).map_or([255, 255, 255], |g| GROUP_COLOURS[g % GROUP_COLOURS.len()]);
            fill(&mut img, 0, DESIGN_GROUP_PX, r, c);
        }
    }
    for col in 0..p {
        let value = |r: usize| rows[r].get(col).copied().unwrap_or(f64::NAN);
        let (lo, hi) = (0..n)
            .map(value)
            .filter(|v| v.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(v), h.max(v)));
        let x0 = left + col * (DESIGN_COLUMN_PX + DESIGN_GAP_PX);
        for r in 0..n {
            let v = value(r);
            let c = if !v.is_finite() {
                [255, 0, 0]
            } else if hi > lo {
                let g = (255.0 * (v - lo) / (hi - lo)).round().clamp(0.0, 255.0) as u8;
                [g, g, g]
            } else if v != 0.0 {
                [255, 255, 255]
            } else {
                [0, 0, 0]
            };
            fill(&mut img, x0, DESIGN_COLUMN_PX, r, c);
        }
    }
    img.encode()
}
