//! The HTML report: self-contained and bounded, every picture decodes, it renders in a real
//! browser (Chromium, headless), `voxflip report` rebuilds it byte for byte, a hot voxel
//! lands on its pixel on a background of another resolution, and the tables' labels equal
//! a direct lookup in the atlas at each peak.
use crate::common::voxflip;
use base64::Engine;
use std::path::{Path, PathBuf};
use std::process::Command;
use voxflip_io::{header_from_affine, write_image};

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = voxflip(dir, args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "voxflip {args:?} failed: {err}");
    String::from_utf8_lossy(&o.stdout).into_owned() + &err
}

/// The data URIs of every `src="data:..."` in `html`, as (media type, bytes).
fn data_uris(html: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for part in html.split("src=\"").skip(1) {
        let uri = &part[..part.find('"').expect("a closing quote")];
        let rest = uri.strip_prefix("data:").unwrap_or_else(|| panic!("an image that is not inline: {uri:.80}"));
        let (mime, b64) = rest.split_once(";base64,").expect("base64 data");
        out.push((mime.to_string(), base64::engine::general_purpose::STANDARD.decode(b64).expect("valid base64")));
    }
    out
}

fn decode_png(bytes: &[u8]) -> (usize, usize, Vec<[u8; 3]>) {
    let dec = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut r = dec.read_info().expect("a PNG header");
    let mut buf = vec![0; r.output_buffer_size()];
    let info = r.next_frame(&mut buf).expect("PNG data");
    let ch = info.color_type.samples();
    let px = buf[..info.buffer_size()].chunks(ch).map(|c| [c[0], c[1.min(ch - 1)], c[2.min(ch - 1)]]).collect();
    (info.width as usize, info.height as usize, px)
}

/// No reference leaves the file: no http(s) except XML namespace names, no external
/// scripts, styles or fonts; every image inline and decodable.
fn check_self_contained(html: &str) -> usize {
    let no_ns = |t: &str| {
        t.replace("xmlns=\"http://www.w3.org/2000/svg\"", "")
            .replace("xmlns:xlink=\"http://www.w3.org/1999/xlink\"", "")
    };
    let page = no_ns(html);
    assert!(!page.contains("http://") && !page.contains("https://"), "a network reference in the page");
    for bad in ["<link", "<script src", "@import", "url("] {
        assert!(!page.contains(bad), "{bad} in the page");
    }
    let uris = data_uris(html);
    for (mime, bytes) in &uris {
        match mime.as_str() {
            "image/png" => {
                let (w, h, _) = decode_png(bytes);
                assert!(w > 0 && h > 0);
            }
            "image/svg+xml" => {
                let text = std::str::from_utf8(bytes).expect("UTF-8 SVG");
                roxmltree::Document::parse(text).expect("well-formed SVG");
                let t = no_ns(text);
                assert!(!t.contains("http://") && !t.contains("https://"), "a network reference in an SVG");
            }
            other => panic!("unexpected image type {other}"),
        }
    }
    uris.len()
}

/// Chromium (Debian's `chromium`), or None: the browser checks are skipped unless
/// VOXFLIP_REQUIRE_BROWSER=1 (CI), which makes its absence a failure.
fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|b| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {b}"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
    });
    if found.is_none() {
        assert!(
            std::env::var("VOXFLIP_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "VOXFLIP_REQUIRE_BROWSER=1 but no chromium"
        );
        crate::common::skipped("report rendered in a browser", "no chromium (apt-get install chromium)");
    }
    found
}

fn headless(browser: &Path, dir: &Path, extra: &[&str], page: &Path) -> std::process::Output {
    Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--allow-file-access-from-files",
        ])
        .arg(format!("--user-data-dir={}", dir.join("chromium-profile").display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium runs")
}

#[test]
fn the_example_report_is_self_contained_names_the_planted_regions_and_renders_in_a_browser() {
    let d = voxflip_testkit::tempdir().unwrap();
    let dir = d.path();
    let said = ok(dir, &["example", "--dir", "ex", "-n", "200", "-T"]);
    let prefix = dir.join("ex/results/interaction");
    let page = PathBuf::from(format!("{}_report.html", prefix.display()));
    assert!(said.contains(&format!("Report: {}", Path::new("ex/results/interaction_report.html").display())), "{said}");
    let html = std::fs::read_to_string(&page).unwrap();
    // Bounded: the 2 mm example's report must be easy to mail and to open.
    assert!(html.len() < 5 << 20, "{} bytes", html.len());
    let images = check_self_contained(&html);
    // Design, and per contrast (3) and correction (voxelwise, TFCE): mosaic, orthogonal
    // view and histogram at least.
    assert!(images > 3 * 2 * 3, "{images} images");
    for region in ["left putamen", "medial orbitofrontal cortex", "right pallidum"] {
        assert!(html.contains(&format!("<td>{region}</td>")), "{region} not in a table of the report");
    }
    let lmax = std::fs::read_to_string(format!("{}_lmax_tstat1.tsv", prefix.display())).unwrap();
    assert!(lmax.lines().next().unwrap().ends_with("\tlabel_regions") && lmax.contains("\tleft putamen\n"), "{lmax}");

    // Rebuilt from the outputs, the same bytes.
    ok(dir, &["report", "ex/results/interaction", "-o", "again.html"]);
    assert!(std::fs::read(dir.join("again.html")).unwrap() == html.as_bytes(), "voxflip report gave another report");

    let Some(browser) = chromium() else { return };
    let dom = headless(&browser, dir, &["--dump-dom", "--virtual-time-budget=10000"], &page);
    let dom = String::from_utf8_lossy(&dom.stdout);
    let attr = |name: &str| -> usize {
        let at = dom.find(&format!("{name}=\"")).unwrap_or_else(|| panic!("{name} not in the rendered page"));
        let v = &dom[at + name.len() + 2..];
        v[..v.find('"').unwrap()].parse().unwrap()
    };
    assert_eq!(attr("data-total"), images, "every image in the page was seen");
    assert_eq!(attr("data-decoded"), images, "every image decoded in the browser");
    assert!(dom.contains("<td>left putamen</td>"), "the labels are on the rendered page");
    let shot = dir.join("shot.png");
    let o = headless(&browser, dir, &[&format!("--screenshot={}", shot.display()), "--window-size=1200,2400"], &page);
    assert!(shot.exists(), "no screenshot: {}", String::from_utf8_lossy(&o.stderr));
    let (w, h, px) = decode_png(&std::fs::read(&shot).unwrap());
    assert!(w >= 1000 && h >= 2000, "{w} x {h}");
    // Not blank: text, grey brains and coloured blobs make many colours; a blank page has one.
    let mut colours: Vec<[u8; 3]> = px.clone();
    colours.sort();
    colours.dedup();
    assert!(colours.len() > 50, "{} colours in the screenshot", colours.len());
    let non_white = px.iter().filter(|p| **p != [255, 255, 255]).count();
    assert!(non_white * 20 > px.len(), "{non_white} of {} pixels drawn", px.len());
}

/// MNI-like 2 mm affine of a small grid.
fn affine2() -> [[f64; 4]; 3] {
    [[-2.0, 0.0, 0.0, 12.0], [0.0, 2.0, 0.0, -12.0], [0.0, 0.0, 2.0, -10.0]]
}

fn mm_of(a: &[[f64; 4]; 3], v: [usize; 3]) -> [f64; 3] {
    [0, 1, 2].map(|r| a[r][0] * v[0] as f64 + a[r][1] * v[1] as f64 + a[r][2] * v[2] as f64 + a[r][3])
}

const DIMS: [usize; 3] = [12, 12, 10];
const HOT: [usize; 3] = [4, 7, 5];
const N: usize = 10;

/// A one-sample study of N images on the 2 mm grid whose only effect is voxel HOT.
fn hot_voxel_study(dir: &Path) {
    let nv: usize = DIMS.iter().product();
    let hot = HOT[0] + DIMS[0] * (HOT[1] + DIMS[1] * HOT[2]);
    let mut data = vec![0f32; nv * N];
    for s in 0..N {
        for v in 0..nv {
            // Deterministic noise of mean 0 (a hash in -1..1).
            let h = ((v * 7919 + s * 104_729) as u32).wrapping_mul(2_654_435_761) >> 8;
            data[s * nv + v] = (h as f32 / (1u32 << 24) as f32) * 2.0 - 1.0;
        }
        data[s * nv + hot] += 20.0;
    }
    let h = header_from_affine(DIMS, [2.0; 3], affine2(), 4);
    write_image(&dir.join("data.nii.gz"), &h, DIMS, N, &data).unwrap();
}

/// A 1 mm background covering the same brain from another origin.
fn fine_background(dir: &Path) -> [[f64; 4]; 3] {
    let dims = [26, 26, 22];
    let a = [[-1.0, 0.0, 0.0, 13.5], [0.0, 1.0, 0.0, -13.0], [0.0, 0.0, 1.0, -11.0]];
    let data: Vec<f32> = (0..dims.iter().product::<usize>()).map(|i| 50.0 + (i % 7) as f32 * 10.0).collect();
    write_image(&dir.join("bg.nii.gz"), &header_from_affine(dims, [1.0; 3], a, 4), dims, 1, &data).unwrap();
    a
}

#[test]
fn a_hot_voxel_lands_on_its_pixel_on_a_background_of_another_resolution() {
    let d = voxflip_testkit::tempdir().unwrap();
    let dir = d.path();
    hot_voxel_study(dir);
    fine_background(dir);
    ok(dir, &["-i", "data.nii.gz", "-1", "-o", "out", "-x", "-n", "0", "--background", "bg.nii.gz", "--quiet"]);
    // The corrected map: the hot voxel is the one significant voxel.
    let corrp = voxflip_io::read_image(&dir.join("out_vox_corrp_tstat1.nii.gz")).unwrap();
    let sig: Vec<usize> = (0..corrp.data.len()).filter(|&i| corrp.data[i] >= 0.95).collect();
    assert_eq!(sig, vec![HOT[0] + DIMS[0] * (HOT[1] + DIMS[1] * HOT[2])]);
    let html = std::fs::read_to_string(dir.join("out_report.html")).unwrap();
    check_self_contained(&html);
    let at = html.find("<img class=\"mosaic\" alt=\"tstat1 vox").expect("the voxelwise mosaic");
    let tag = &html[at..at + html[at..].find('>').unwrap()];
    let attr = |n: &str| -> String {
        let i = tag.find(&format!("{n}=\"")).unwrap_or_else(|| panic!("{n}")) + n.len() + 2;
        tag[i..i + tag[i..].find('"').unwrap()].to_string()
    };
    let nums = |n: &str| -> Vec<f64> { attr(n).split(',').map(|x| x.parse().unwrap()).collect() };
    let (slices, columns, tile, scale) =
        (nums("data-slices-mm"), nums("data-columns")[0] as usize, nums("data-tile"), nums("data-scale")[0] as usize);
    let (origin, step) = (nums("data-origin-mm"), nums("data-step-mm")[0]);
    let (tw, th) = (tile[0] as usize, tile[1] as usize);
    let (_, b64) = attr("src").split_once(";base64,").map(|(a, b)| (a.to_string(), b.to_string())).unwrap();
    let (w, _, px) = decode_png(&base64::engine::general_purpose::STANDARD.decode(b64).unwrap());
    let hot = mm_of(&affine2(), HOT);
    let coloured = |p: [u8; 3]| p[0] != p[1] || p[1] != p[2];
    let mut hits = 0;
    for (i, p) in px.iter().enumerate() {
        if !coloured(*p) {
            continue;
        }
        let (x, y) = (i % w, i / w);
        let t = (y / th) * columns + x / tw;
        // The world position of this pixel's display voxel (neurological: x grows to the
        // right, anterior up).
        let (a, b) = ((x % tw) / scale, (y % th) / scale);
        let rows = th / scale;
        let mm = [origin[0] + a as f64 * step, origin[1] + (rows - 1 - b) as f64 * step, slices[t]];
        // Nearest-neighbour resampling of the 2 mm voxel: display voxels within 1 mm of its
        // centre on every axis (half a 2 mm voxel; 1e-6 for the rounding of mm).
        for k in 0..3 {
            assert!((mm[k] - hot[k]).abs() <= 1.0 + 1e-6, "a coloured pixel at {mm:?}, the hot voxel at {hot:?}");
        }
        hits += 1;
    }
    assert!(hits >= scale * scale, "the hot voxel is drawn ({hits} pixels)");
}

/// The labels the cluster tables hold equal a direct lookup at each peak: a label image
/// with a TSV and a probabilistic FSL atlas (XML + 4D image), both written here.
#[test]
fn cluster_labels_are_the_atlas_at_the_peak() {
    let d = voxflip_testkit::tempdir().unwrap();
    let dir = d.path();
    hot_voxel_study(dir);
    let nv: usize = DIMS.iter().product();
    let idx = |v: [usize; 3]| v[0] + DIMS[0] * (v[1] + DIMS[1] * v[2]);
    // Label image on the data's grid: left half 1, right half 2, the hot voxel's column 3.
    let mut labels = vec![0f32; nv];
    for z in 0..DIMS[2] {
        for y in 0..DIMS[1] {
            for x in 0..DIMS[0] {
                labels[idx([x, y, z])] = if x == HOT[0] && y == HOT[1] {
                    3.0
                } else if x < 6 {
                    1.0
                } else {
                    2.0
                };
            }
        }
    }
    let h = header_from_affine(DIMS, [2.0; 3], affine2(), 4);
    write_image(&dir.join("lab.nii.gz"), &h, DIMS, 1, &labels).unwrap();
    std::fs::write(dir.join("lab.tsv"), "index\tname\n1\tWest\n2\tEast\n3\tHot Column\n").unwrap();
    // Probabilistic: three volumes; at the hot voxel 20 / 70 / 10 percent.
    let mut prob = vec![0f32; nv * 3];
    for v in 0..nv {
        prob[v] = 60.0;
        prob[nv + v] = 30.0;
    }
    let hv = idx(HOT);
    prob[hv] = 20.0;
    prob[nv + hv] = 70.0;
    prob[2 * nv + hv] = 10.0;
    std::fs::create_dir_all(dir.join("atl/P")).unwrap();
    write_image(&dir.join("atl/P/prob.nii.gz"), &header_from_affine(DIMS, [2.0; 3], affine2(), 4), DIMS, 3, &prob)
        .unwrap();
    std::fs::write(
        dir.join("atl/P.xml"),
        "<?xml version=\"1.0\"?>\n<atlas version=\"1.0\"><header><name>Test Prob</name><shortname>TP</shortname>\
         <type>Probabilistic</type><images><imagefile>/P/prob</imagefile><summaryimagefile>/P/prob</summaryimagefile></images></header>\
         <data><label index=\"0\" x=\"0\" y=\"0\" z=\"0\">Alpha</label><label index=\"1\" x=\"0\" y=\"0\" z=\"0\">Beta</label>\
         <label index=\"2\" x=\"0\" y=\"0\" z=\"0\">Gamma</label></data></atlas>\n",
    )
    .unwrap();
    ok(
        dir,
        &[
            "-i",
            "data.nii.gz",
            "-1",
            "-o",
            "out",
            "-x",
            "-n",
            "0",
            "--atlas",
            "lab.nii.gz",
            "--atlas",
            "atl/P.xml",
            "--quiet",
        ],
    );
    let table = std::fs::read_to_string(dir.join("out_clusters_tstat1.tsv")).unwrap();
    let mut lines = table.lines();
    let head: Vec<&str> = lines.next().unwrap().split('\t').collect();
    let col = |n: &str| head.iter().position(|h| *h == n).unwrap_or_else(|| panic!("{n} in {head:?}"));
    let row: Vec<&str> = lines.find(|l| l.starts_with("vox\t")).expect("the voxelwise cluster").split('\t').collect();
    let peak: Vec<f64> = ["peak_x", "peak_y", "peak_z"].iter().map(|c| row[col(c)].parse().unwrap()).collect();
    // Direct lookup: world -> voxel by the inverse of affine2, then the images' values.
    let a = affine2();
    let v = [0, 1, 2].map(|k| ((peak[k] - a[k][3]) / a[k][k]).round() as usize);
    assert_eq!(v, HOT, "the peak is the hot voxel");
    let names = ["", "West", "East", "Hot Column"];
    assert_eq!(row[col("label_lab")], names[labels[idx(v)] as usize]);
    let p: Vec<f32> = (0..3).map(|k| prob[k * nv + idx(v)]).collect();
    let best = (0..3).max_by(|&i, &j| p[i].total_cmp(&p[j])).unwrap();
    assert_eq!(row[col("label_Test_Prob")], format!("{}% {}", p[best], ["Alpha", "Beta", "Gamma"][best]));
    // And the report shows them.
    let html = std::fs::read_to_string(dir.join("out_report.html")).unwrap();
    assert!(html.contains("<td>Hot Column</td>") && html.contains("<td>70% Beta</td>"));
}

/// --no-report writes neither the report nor its background; `voxflip report` makes one
/// later all the same (on the analysed voxels' silhouette). A bad --atlas or --background
/// fails in one line naming it, before any work, and leaves nothing.
#[test]
fn no_report_then_report_later_and_bad_display_options() {
    let d = voxflip_testkit::tempdir().unwrap();
    let dir = d.path();
    hot_voxel_study(dir);
    ok(dir, &["-i", "data.nii.gz", "-1", "-o", "out", "-x", "-n", "50", "--no-report", "--quiet"]);
    assert!(!dir.join("out_report.html").exists() && !dir.join("out_mean.nii.gz").exists());
    let said = ok(dir, &["report", "out"]);
    assert!(said.contains("report in out_report.html"), "{said}");
    let html = std::fs::read_to_string(dir.join("out_report.html")).unwrap();
    assert!(html.contains("the analysed voxels (the run kept no mean image)"));
    check_self_contained(&html);
    for (flag, value, words) in [
        ("--atlas", "nothere.nii.gz", "nothere.nii.gz: "),
        ("--background", "nobg.nii.gz", "nobg.nii.gz: no such file"),
    ] {
        let o = voxflip(dir, &["-i", "data.nii.gz", "-1", "-o", "bad", "-x", "-n", "50", flag, value]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(words) && err.trim().lines().count() == 1, "{err}");
        assert!(!std::fs::read_dir(dir).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with("bad")));
    }
    let o = voxflip(dir, &["report", "nothing"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("nothing_voxflip.json: no such file") && err.trim().lines().count() == 1,
        "{err}"
    );
}
