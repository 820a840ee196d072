use super::*;

/// Decodes an RGB8 PNG into (width, height, pixels).
fn decode(png: &Png) -> (usize, usize, Vec<u8>) {
    let dec = png::Decoder::new(png.0.as_slice());
    let mut reader = dec.read_info().expect("PNG header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("PNG data");
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buf.truncate(info.buffer_size());
    (info.width as usize, info.height as usize, buf)
}

fn px(img: &(usize, usize, Vec<u8>), x: usize, y: usize) -> [u8; 3] {
    let o = (y * img.0 + x) * 3;
    [img.2[o], img.2[o + 1], img.2[o + 2]]
}

fn coloured(c: [u8; 3]) -> bool {
    c[0] != c[1] || c[1] != c[2]
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// The 1 mm background of the alignment test (x flipped), values all nonzero.
fn background_1mm() -> Volume {
    let dims = [40, 48, 40];
    let mut data = Vec::new();
    for k in 0..dims[2] {
        for j in 0..dims[1] {
            for i in 0..dims[0] {
                data.push(100.0 + (i + 2 * j + 3 * k) as f32);
            }
        }
    }
    Volume { dims, affine: [[-1.0, 0.0, 0.0, 20.0], [0.0, 1.0, 0.0, -24.0], [0.0, 0.0, 1.0, -20.0]], data }
}

/// A 2 mm volume on `affine`, `inside` everywhere but `outside` at voxel `hot`.
fn one_voxel(affine: [[f64; 4]; 3], hot: [usize; 3], inside: f32, rest: f32) -> Volume {
    let dims = [20, 24, 20];
    let mut data = vec![rest; dims[0] * dims[1] * dims[2]];
    data[hot[0] + dims[0] * (hot[1] + dims[1] * hot[2])] = inside;
    Volume { dims, affine, data }
}

#[test]
fn display_grid_covers_the_voxel_centres() {
    let g = DisplayGrid::covering(&background_1mm());
    assert_eq!(g.origin_mm, [-19.0, -24.0, -20.0]);
    assert_eq!(g.step_mm, 1.0);
    assert_eq!(g.size, [40, 48, 40]);
    // Axial: x to the right, anterior (y) up.
    assert_eq!(g.axial_pixel([-19.0, 23.0, 0.0]), (0, 0));
    assert_eq!(g.axial_pixel([20.0, -24.0, 0.0]), (39, 47));
    assert_eq!(g.axial_pixel([0.0, 0.0, 0.0]), (19, 23));
}

/// One 2 mm voxel of an overlay on a different grid (origin off by half a display voxel, and
/// optionally x flipped) lands exactly on the 2x2 display voxels within 1 mm of its centre, in
/// the tiles whose z is within 1 mm of its centre, and nowhere else.
#[test]
fn overlay_voxel_lands_where_its_world_position_says() {
    let bg = background_1mm();
    let grid = DisplayGrid::covering(&bg);
    // (affine, hot voxel): both put the hot voxel's centre at world (-6.5, -5.5, -3.5).
    let cases = [
        ([[2.0, 0.0, 0.0, -20.5], [0.0, 2.0, 0.0, -25.5], [0.0, 0.0, 2.0, -21.5]], [7, 10, 9]),
        ([[-2.0, 0.0, 0.0, 7.5], [0.0, 2.0, 0.0, -25.5], [0.0, 0.0, 2.0, -21.5]], [7, 10, 9]),
    ];
    let slices = [-10.0, -5.0, -4.0, -3.0, -2.0, 5.0, -3.5];
    for (affine, hot) in cases {
        let a = affine;
        let h = hot.map(|v| v as f64);
        let centre: [f64; 3] = std::array::from_fn(|r| a[r][0] * h[0] + a[r][1] * h[1] + a[r][2] * h[2] + a[r][3]);
        assert_eq!(centre, [-6.5, -5.5, -3.5]);
        let values = one_voxel(affine, hot, 5.0, 1.0);
        let shown = one_voxel(affine, hot, 1.0, 0.0);
        let ov = Overlay { values: &values, shown: &shown, range: (2.0, 5.0) };
        let (png, layout) = mosaic_at(&bg, Some(&ov), &grid, &slices);
        let img = decode(&png);
        let scale = layout.scale;
        assert_eq!(scale, display_scale(&grid));
        assert_eq!(layout.tile, (40 * scale, 48 * scale));
        assert_eq!(layout.slices_mm, slices.to_vec());
        let tile_rows = slices.len().div_ceil(layout.columns);
        assert_eq!((img.0, img.1), (layout.columns * layout.tile.0, tile_rows * layout.tile.1));

        // The oracle, from world positions alone.
        let mut expected = vec![false; img.0 * img.1];
        for (n, &z) in slices.iter().enumerate() {
            let (tx, ty) = ((n % layout.columns) * layout.tile.0, (n / layout.columns) * layout.tile.1);
            for b in 0..48 {
                for a in 0..40 {
                    let x = grid.origin_mm[0] + a as f64 * grid.step_mm;
                    let y = grid.origin_mm[1] + (47 - b) as f64 * grid.step_mm;
                    let inside =
                        (x - centre[0]).abs() < 1.0 && (y - centre[1]).abs() < 1.0 && (z - centre[2]).abs() < 1.0;
                    if inside {
                        for yy in 0..scale {
                            for xx in 0..scale {
                                expected[(ty + b * scale + yy) * img.0 + tx + a * scale + xx] = true;
                            }
                        }
                    }
                }
            }
        }
        // Tiles at z = -4, -3, -3.5; 2x2 display voxels each.
        assert_eq!(expected.iter().filter(|&&e| e).count(), 3 * 4 * scale * scale);
        for y in 0..img.1 {
            for x in 0..img.0 {
                assert_eq!(
                    coloured(px(&img, x, y)),
                    expected[y * img.0 + x],
                    "pixel ({x}, {y}) with affine {affine:?}"
                );
            }
        }
        // The colour: the hot map (red..yellow) everywhere in the block; at z = -3.5 the
        // display point (-6, -5) is 0.25 voxel off the centre in x and y, so its trilinear value
        // is 0.75^2 * 5 + (1 - 0.75^2) * 1 = 3.25, i.e. 1.25/3 of the way up the range.
        let (a, b) = grid.axial_pixel(centre);
        assert_eq!((a, b), (13, 28));
        let tile = |n: usize| ((n % layout.columns) * layout.tile.0, (n / layout.columns) * layout.tile.1);
        let g = (255.0f64 * 1.25 / 3.0).round() as u8;
        assert_eq!(px(&img, tile(6).0 + a * scale, tile(6).1 + b * scale), [255, g, 0]);
        for n in [2, 3] {
            let c = px(&img, tile(n).0 + a * scale, tile(n).1 + b * scale);
            assert!(c[0] == 255 && c[2] == 0, "{c:?}");
        }
    }
}

#[test]
fn samplers_match_hand_computed_values() {
    // Identity 2x2x2, values 0..7 (x fastest).
    let v = Volume {
        dims: [2, 2, 2],
        affine: [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]],
        data: (0..8).map(|x| x as f32).collect(),
    };
    assert_eq!(v.trilinear([0.5, 0.5, 0.5]), 3.5);
    assert_eq!(v.trilinear([1.0, 0.0, 1.0]), 5.0);
    assert_eq!(v.trilinear([0.25, 0.0, 0.0]), 0.25);
    assert_eq!(v.nearest([0.6, 0.4, 0.9]), 5.0);
    assert_eq!(v.nearest([2.0, 0.0, 0.0]), 0.0);
    assert_eq!(v.trilinear([-0.6, 0.0, 0.0]), 0.0);

    // Oblique and flipped: i -> +y (3 mm), j -> -x (2 mm), k -> -z (1 mm).
    let dims = [4, 5, 6];
    let mut data = Vec::new();
    for k in 0..dims[2] {
        for j in 0..dims[1] {
            for i in 0..dims[0] {
                data.push((i + 10 * j + 100 * k) as f32);
            }
        }
    }
    let v = Volume { dims, affine: [[0.0, -2.0, 0.0, 10.0], [3.0, 0.0, 0.0, -5.0], [0.0, 0.0, -1.0, 7.0]], data };
    // Voxel (1, 2, 3) is world (10 - 4, 3 - 5, 7 - 3).
    let w = v.world_to_voxel([6.0, -2.0, 4.0]);
    assert!(close(w[0], 1.0) && close(w[1], 2.0) && close(w[2], 3.0), "{w:?}");
    assert_eq!(v.voxel_to_world([1.0, 2.0, 3.0]), [6.0, -2.0, 4.0]);
    // Voxel (1.5, 2.25, 0.5) = world (10 - 4.5, 4.5 - 5, 7 - 0.5); trilinear of a linear
    // function is exact: 1.5 + 22.5 + 50.
    assert!((v.trilinear([5.5, -0.5, 6.5]) - 74.0).abs() < 1e-4);
    // Voxel (1.4, 2.6, 0.2) -> nearest (1, 3, 0) = 31.
    assert_eq!(v.nearest([4.8, -0.8, 6.8]), 31.0);
    // Voxel (-1, 0, 0): outside.
    assert_eq!(v.trilinear([10.0, -8.0, 7.0]), 0.0);
    assert_eq!(v.nearest([10.0, -8.0, 7.0]), 0.0);
    // Voxel (3.3, 0, 0): within half a voxel of the last centre, clamped to it; (3.6, 0, 0) out.
    assert!((v.trilinear([10.0, 4.9, 7.0]) - 3.0).abs() < 1e-4);
    assert_eq!(v.trilinear([10.0, 5.8, 7.0]), 0.0);
    assert_eq!(v.voxel_sizes(), [3.0, 2.0, 1.0]);

    // A general rotation (30 degrees about z) with anisotropic voxels: round trip.
    let (s, c) = (30f64.to_radians().sin(), 30f64.to_radians().cos());
    let r = Volume {
        dims: [3, 3, 3],
        affine: [[2.0 * c, -s, 0.0, 1.0], [2.0 * s, c, 0.0, -2.0], [0.0, 0.0, -3.0, 5.0]],
        data: vec![1.0; 27],
    };
    let p = [0.7, -1.3, 2.2];
    let q = r.world_to_voxel(r.voxel_to_world(p));
    assert!((0..3).all(|i| (p[i] - q[i]).abs() < 1e-12), "{q:?}");
    // A singular affine samples as outside.
    let z = Volume { affine: [[0.0; 4]; 3], ..r.clone() };
    assert_eq!(z.trilinear([0.0; 3]), 0.0);
    assert_eq!(z.nearest([0.0; 3]), 0.0);
}

#[test]
fn colour_map_is_hot_and_cool() {
    assert_eq!(overlay_colour(2.0, (2.0, 6.0)), [255, 0, 0]);
    assert_eq!(overlay_colour(6.0, (2.0, 6.0)), [255, 255, 0]);
    assert_eq!(overlay_colour(4.0, (2.0, 6.0)), [255, 128, 0]);
    assert_eq!(overlay_colour(-2.0, (2.0, 6.0)), [0, 0, 255]);
    assert_eq!(overlay_colour(-9.0, (2.0, 6.0)), [0, 255, 255]);
    assert_eq!(overlay_colour(3.0, (3.0, 3.0)), [255, 255, 0]);
}

/// A 2 mm MNI-shaped volume: an ellipsoid "brain" with texture, zero outside.
fn mni_like() -> Volume {
    let dims = [91, 109, 91];
    let mut data = Vec::with_capacity(91 * 109 * 91);
    for k in 0..dims[2] {
        for j in 0..dims[1] {
            for i in 0..dims[0] {
                let (x, y, z) = ((i as f64 - 45.0) / 36.0, (j as f64 - 60.0) / 45.0, (k as f64 - 40.0) / 34.0);
                let r = x * x + y * y + z * z;
                let v = if r < 1.0 {
                    4000.0 + 3000.0 * ((i as f64 * 0.3).sin() * (j as f64 * 0.2).cos() + (k as f64 * 0.25).sin())
                } else {
                    0.0
                };
                data.push(v as f32);
            }
        }
    }
    Volume { dims, affine: [[-2.0, 0.0, 0.0, 90.0], [0.0, 2.0, 0.0, -126.0], [0.0, 0.0, 2.0, -72.0]], data }
}

#[test]
fn pictures_decode_with_the_expected_sizes() {
    let bg = mni_like();
    let grid = DisplayGrid::covering(&bg);
    assert_eq!(grid.size, [91, 109, 91]);
    assert_eq!(grid.step_mm, 2.0);
    let scale = display_scale(&grid);
    assert_eq!(scale, 2);
    // A blob of positive and negative values.
    let mut values = bg.clone();
    let mut shown = bg.clone();
    for (n, (v, s)) in values.data.iter_mut().zip(shown.data.iter_mut()).enumerate() {
        let (i, j, k) = (n % 91, (n / 91) % 109, n / (91 * 109));
        let d2 = (i as f64 - 30.0).powi(2) + (j as f64 - 60.0).powi(2) + (k as f64 - 40.0).powi(2);
        let blob = 8.0 * (-d2 / 40.0).exp();
        *v = if i > 45 { -blob as f32 } else { blob as f32 };
        let d2b = (i as f64 - 60.0).powi(2) + (j as f64 - 60.0).powi(2) + (k as f64 - 40.0).powi(2);
        *v += if i > 45 { -8.0 * (-d2b / 40.0).exp() as f32 } else { 0.0 };
        *s = if v.abs() > 3.0 { 1.0 } else { 0.0 };
    }
    let ov = Overlay { values: &values, shown: &shown, range: (3.0, 8.0) };

    let (png, layout) = mosaic(&bg, Some(&ov), &grid, 20);
    let img = decode(&png);
    assert_eq!(layout.slices_mm.len(), 20);
    assert_eq!(layout.tile, (91 * scale, 109 * scale));
    let rows = 20usize.div_ceil(layout.columns);
    assert_eq!((img.0, img.1), (layout.columns * layout.tile.0, rows * layout.tile.1));
    assert!(png.0.len() < 400_000, "mosaic is {} bytes", png.0.len());
    // Slices are increasing display planes within the brain's z range.
    let (zlo, zhi) = (-72.0 + 2.0 * 6.0, -72.0 + 2.0 * 74.0);
    for w in layout.slices_mm.windows(2) {
        assert!(w[0] < w[1]);
    }
    for &z in &layout.slices_mm {
        assert!(z >= zlo && z <= zhi, "{z}");
        assert!(close(((z - grid.origin_mm[2]) / 2.0).fract(), 0.0));
    }
    // Both hot and cool colours show up.
    let pixels: Vec<[u8; 3]> = (0..img.0 * img.1).map(|n| px(&img, n % img.0, n / img.0)).collect();
    assert!(pixels.iter().any(|c| c[0] == 255 && c[2] == 0));
    assert!(pixels.iter().any(|c| c[0] == 0 && c[2] == 255));
    assert!(png.data_uri().starts_with("data:image/png;base64,iVBORw0KGgo"));

    let (w3, h3) = ((109 + 91 + 91) * scale, 109 * scale);
    let at = [-30.0, -6.0, 8.0];
    let ortho = decode(&orthogonal(&bg, Some(&ov), &grid, at));
    assert_eq!((ortho.0, ortho.1), (w3, h3));
    let plain = decode(&orthogonal(&bg, None, &grid, at));
    assert_eq!((plain.0, plain.1), (w3, h3));

    let glass = decode(&glass_brain(&bg, &ov, &grid));
    assert_eq!((glass.0, glass.1), (w3, h3));
    let g: Vec<[u8; 3]> = (0..glass.0 * glass.1).map(|n| px(&glass, n % glass.0, n / glass.0)).collect();
    assert!(g.contains(&[255, 255, 255]));
    assert!(g.contains(&[210, 210, 210]));
    assert!(g.iter().any(|&c| coloured(c)));

    // Degenerate inputs still give pictures.
    let empty = Volume {
        dims: [1, 1, 1],
        affine: [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]],
        data: vec![0.0],
    };
    let eg = DisplayGrid::covering(&empty);
    assert_eq!(eg.size, [1, 1, 1]);
    let (p, l) = mosaic(&empty, None, &eg, 3);
    let d = decode(&p);
    assert_eq!((d.0, d.1), (3 * l.tile.0, l.tile.1));
    let (p, _) = mosaic(&empty, None, &eg, 0);
    decode(&p);
}

#[test]
fn glass_brain_projects_the_overlay_maximum() {
    let bg = background_1mm();
    let grid = DisplayGrid::covering(&bg);
    let affine = [[2.0, 0.0, 0.0, -20.5], [0.0, 2.0, 0.0, -25.5], [0.0, 0.0, 2.0, -21.5]];
    let values = one_voxel(affine, [7, 10, 9], 5.0, 1.0);
    let shown = one_voxel(affine, [7, 10, 9], 1.0, 0.0);
    let ov = Overlay { values: &values, shown: &shown, range: (2.0, 5.0) };
    let img = decode(&glass_brain(&bg, &ov, &grid));
    let scale = display_scale(&grid);
    // Sagittal (48 wide) | coronal (40) | axial (40): 4 display voxels in each view.
    let n = (0..img.0 * img.1).filter(|&k| coloured(px(&img, k % img.0, k / img.0))).count();
    assert_eq!(n, 3 * 4 * scale * scale);
    let (a, b) = grid.axial_pixel([-6.5, -5.5, -3.5]);
    // The largest value along the ray is at z = -4 or -3 (0.25 voxel off in z too):
    // 0.75^3 * 5 + (1 - 0.75^3) * 1 = 2.6875.
    let g = (255.0f64 * 0.6875 / 3.0).round() as u8;
    assert_eq!(px(&img, (48 + 40 + a) * scale, b * scale), [255, g, 0]);
}

#[test]
fn svgs_are_well_formed_and_labelled() {
    let bar = colour_bar_svg(3.1, 7.25, "t <statistic>");
    assert!(bar.starts_with("<svg") && bar.ends_with("</svg>"));
    assert!(bar.contains("t &lt;statistic&gt;") && bar.contains("3.10") && bar.contains("7.25"));
    assert!(bar.contains("rgb(255,0,0)") && bar.contains("rgb(255,255,0)"));

    let null: Vec<f32> = (0..500).map(|i| 2.0 + (i as f32 * 0.37).sin().abs() * 3.0).collect();
    let check = |svg: String, label: &str| {
        let t = svg.trim();
        assert!(t.starts_with("<svg") && t.ends_with("</svg>"), "{t}");
        assert!(t.contains(label), "{t}");
        assert_eq!(t.matches("<svg").count(), 1);
        t.to_string()
    };
    let svg = check(null_histogram_svg(&Bins::of(&null, 6.0, 4.5), 6.0, 4.5, "max t"), "max t");
    assert!(svg.contains("5% FWE 4.50") && svg.contains("observed 6.00"));
    assert!(svg.contains("stroke-dasharray") || svg.matches("<line").count() + svg.matches("<polyline").count() > 2);
    check(null_histogram_svg(&Bins::of(&[], 3.0, 2.0), 3.0, 2.0, "empty"), "empty");
    check(null_histogram_svg(&Bins::of(&[], f32::NAN, f32::NAN), f32::NAN, f32::NAN, "nothing"), "nothing");
    check(null_histogram_svg(&Bins::of(&[2.0; 100], 2.0, 2.0), 2.0, 2.0, "equal"), "equal");
    check(null_histogram_svg(&Bins::of(&[0.0; 10], 0.0, 0.0), 0.0, 0.0, "zeros"), "zeros");
    check(
        null_histogram_svg(
            &Bins::of(&[f32::NAN, f32::INFINITY, 1.0, f32::NEG_INFINITY, 2.0], 1.5, 1.9),
            1.5,
            1.9,
            "nonfinite",
        ),
        "nonfinite",
    );
    let low = check(null_histogram_svg(&Bins::of(&null, -20.0, 4.5), -20.0, 4.5, "below"), "below");
    assert!(low.contains("observed -20.00"));
    check(null_histogram_svg(&Bins::of(&null, 1e30, f32::INFINITY), 1e30, f32::INFINITY, "huge"), "huge");
    check(null_histogram_svg(&Bins::of(&[1e-30, 2e-30], 1e-30, 1e-30), 1e-30, 1e-30, "tiny"), "tiny");
}

#[test]
fn design_matrix_grey_levels_and_size() {
    let rows = vec![vec![1.0, 0.0], vec![1.0, 2.0], vec![1.0, 4.0]];
    let img = decode(&design_matrix(&rows, None));
    let rp = design_row_px(3);
    assert_eq!(rp, 16);
    assert_eq!((img.0, img.1), (2 * DESIGN_COLUMN_PX + DESIGN_GAP_PX, 3 * rp));
    let col1 = DESIGN_COLUMN_PX + DESIGN_GAP_PX;
    for (r, g) in [0u8, 128, 255].into_iter().enumerate() {
        for y in r * rp..(r + 1) * rp {
            // The constant intercept is white; the second column runs black..white.
            assert_eq!(px(&img, 0, y), [255, 255, 255]);
            assert_eq!(px(&img, DESIGN_COLUMN_PX - 1, y), [255, 255, 255]);
            assert_eq!(px(&img, col1, y), [g, g, g]);
            assert_eq!(px(&img, col1 + DESIGN_COLUMN_PX - 1, y), [g, g, g]);
            assert_eq!(px(&img, DESIGN_COLUMN_PX, y), DESIGN_GAP_COLOUR);
        }
    }

    let img = decode(&design_matrix(&rows, Some(&[0, 1, 0])));
    let left = DESIGN_GROUP_PX + DESIGN_GAP_PX;
    assert_eq!((img.0, img.1), (left + 2 * DESIGN_COLUMN_PX + DESIGN_GAP_PX, 3 * rp));
    let strip: Vec<[u8; 3]> = (0..3).map(|r| px(&img, 0, r * rp + 1)).collect();
    assert_eq!(strip[0], strip[2]);
    assert_ne!(strip[0], strip[1]);
    assert_eq!(px(&img, left + col1, 2 * rp), [255, 255, 255]);

    // Many rows: 2 px each; few rows: bounded per-row height.
    let many: Vec<Vec<f64>> = (0..300).map(|i| vec![i as f64]).collect();
    let img = decode(&design_matrix(&many, None));
    assert_eq!((img.0, img.1), (DESIGN_COLUMN_PX, 600));
    let img = decode(&design_matrix(&many[..100], None));
    assert_eq!(img.1, 400);
    // Empty and ragged inputs do not panic.
    decode(&design_matrix(&[], None));
    decode(&design_matrix(&[vec![1.0, f64::NAN], vec![2.0]], Some(&[3])));
}

#[test]
fn bins_hold_every_finite_value_and_both_marks() {
    let b = Bins::of(&[1.0, 2.0, 2.5, 4.0, f32::NAN], 6.0, 3.5);
    assert_eq!((b.lo, b.hi), (1.0, 6.0));
    assert_eq!(b.counts.iter().sum::<u32>(), 4);
    // 4.0 lies at (4 - 1) / 5 * 40 = bin 24; 1.0 in bin 0; 2.0 at 8; 2.5 at 12.
    assert_eq!([b.counts[0], b.counts[8], b.counts[12], b.counts[24]], [1, 1, 1, 1]);
    let flat = Bins::of(&[2.0; 3], 2.0, 2.0);
    assert!(flat.lo < 2.0 && flat.hi > 2.0 && flat.counts.iter().sum::<u32>() == 3);
    assert_eq!(Bins::of(&[], f32::NAN, f32::NAN).counts.iter().sum::<u32>(), 0);
}
