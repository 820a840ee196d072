//! Each test writes its atlas, then checks look-ups against an oracle computed here:
//! world -> voxel by hand for the MNI-like affine below, then the test's own data.
use super::*;
use std::collections::BTreeMap;
use voxflip_io::nifti::{header_from_affine, write_image};

const DIMS: [usize; 3] = [10, 12, 8];
/// MNI152 2 mm style: x runs right to left (negative step).
const AFF: [[f64; 4]; 3] = [[-2.0, 0.0, 0.0, 90.0], [0.0, 2.0, 0.0, -126.0], [0.0, 0.0, 2.0, -72.0]];
const NAMES: [(u32, &str); 4] = [(1, "Left Putamen"), (2, "Right Putamen"), (3, "Left Caudate"), (4, "Brain-Stem")];

fn write(path: &Path, nvol: usize, data: &[f32]) {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    let h = header_from_affine(DIMS, [2.0; 3], AFF, 4);
    write_image(path, &h, DIMS, nvol, data).unwrap();
}

/// The label value at voxel (i, j, k): 0 (unlabelled) ..= 4.
fn label_value(i: usize, j: usize, k: usize) -> u32 {
    ((i + 2 * j + 3 * k) % 5) as u32
}

/// Label image data, stored off-integer (value + 0.2) to exercise the rounding.
fn label_data() -> Vec<f32> {
    let mut d = Vec::new();
    for k in 0..DIMS[2] {
        for j in 0..DIMS[1] {
            for i in 0..DIMS[0] {
                let v = label_value(i, j, k);
                d.push(if v == 0 { 0.0 } else { v as f32 + 0.2 });
            }
        }
    }
    d
}

/// World (mm) -> voxel for AFF, by hand: x = 90 - 2i, y = -126 + 2j, z = -72 + 2k.
fn voxel_by_hand(mm: [f64; 3]) -> Option<[usize; 3]> {
    let f = [(90.0 - mm[0]) / 2.0, (mm[1] + 126.0) / 2.0, (mm[2] + 72.0) / 2.0];
    let mut v = [0; 3];
    for a in 0..3 {
        let r = f[a].round();
        if r < 0.0 || r >= DIMS[a] as f64 {
            return None;
        }
        v[a] = r as usize;
    }
    Some(v)
}

/// Points to query: every voxel, off-centre by less than half a voxel, and a few outside.
fn points() -> Vec<[f64; 3]> {
    let mut p = Vec::new();
    for k in 0..DIMS[2] {
        for j in 0..DIMS[1] {
            for i in 0..DIMS[0] {
                let o = [0.6, -0.8, 0.3][(i + j + k) % 3];
                p.push([90.0 - 2.0 * i as f64 + o, -126.0 + 2.0 * j as f64 - o, -72.0 + 2.0 * k as f64 + o]);
            }
        }
    }
    p.extend([[100.0, 0.0, 0.0], [0.0, -130.0, 0.0], [0.0, 0.0, 100.0], [90.9, -126.0, -72.0], [71.0, -104.0, -58.0]]);
    p
}

fn names() -> BTreeMap<u32, String> {
    NAMES.iter().map(|&(k, n)| (k, n.to_string())).collect()
}

/// The label-atlas oracle: name at mm from the test's own data.
fn expected_label(mm: [f64; 3], names: &BTreeMap<u32, String>) -> Option<String> {
    let [i, j, k] = voxel_by_hand(mm)?;
    let v = label_value(i, j, k);
    if v == 0 {
        return None;
    }
    names.get(&v).cloned()
}

fn check_label_atlas(a: &Atlas, names: &BTreeMap<u32, String>) {
    assert_eq!(a.kind(), AtlasKind::Label);
    let mut hits = 0;
    for mm in points() {
        let want = expected_label(mm, names);
        let got = a.label_at(mm);
        assert_eq!(got.as_ref().map(|l| l.name.clone()), want, "at {mm:?}");
        assert_eq!(a.region_of(mm).map(str::to_string), want);
        if let Some(l) = &got {
            assert_eq!(l.probability, None);
            assert_eq!(Atlas::format(&got), l.name);
            hits += 1;
        } else {
            assert_eq!(Atlas::format(&got), "n/a");
        }
    }
    assert!(hits > 500, "only {hits} labelled points");
    // Outside the image.
    assert_eq!(a.label_at([100.0, 0.0, 0.0]), None);
    assert_eq!(a.label_at([0.0, 0.0, 100.0]), None);
}

#[test]
fn label_image_with_tsv_beside_it() {
    let dir = voxflip_testkit::tempdir().unwrap();
    let img = dir.path().join("seg_dseg.nii.gz");
    write(&img, 1, &label_data());
    let mut tsv = String::from("index\tname\tabbreviation\n");
    for (k, n) in NAMES {
        tsv.push_str(&format!("{k}\t{n}\tX{k}\n"));
    }
    std::fs::write(dir.path().join("seg_dseg.tsv"), tsv).unwrap();
    let a = Atlas::open(img.to_str().unwrap()).unwrap();
    assert_eq!(a.name, "seg_dseg");
    assert_eq!(a.labels().collect::<Vec<_>>(), NAMES.to_vec());
    check_label_atlas(&a, &names());
    // A spot check by hand: voxel (1, 0, 0) has value 1 at x = 88, y = -126, z = -72.
    assert_eq!(a.region_of([88.0, -126.0, -72.0]), Some("Left Putamen"));
    assert_eq!(a.voxel_of([88.0, -126.0, -72.0]), Some([1, 0, 0]));
}

#[test]
fn label_image_with_explicit_csv_and_freesurfer_lut() {
    let dir = voxflip_testkit::tempdir().unwrap();
    let img = dir.path().join("aseg.nii");
    write(&img, 1, &label_data());

    // CSV with label/label_name columns and quoted names.
    let csv = dir.path().join("names.csv");
    let mut t = String::from("label,label_name\n");
    for (k, n) in NAMES {
        t.push_str(&format!("{k},\"{n}\"\n"));
    }
    std::fs::write(&csv, t).unwrap();
    let a = Atlas::open(&format!("{},{}", img.display(), csv.display())).unwrap();
    check_label_atlas(&a, &names());

    // Header-less TSV beside the image as .txt.
    let mut t = String::new();
    for (k, n) in NAMES {
        t.push_str(&format!("{k}\t{n}\n"));
    }
    std::fs::write(dir.path().join("aseg.txt"), t).unwrap();
    check_label_atlas(&Atlas::open(img.to_str().unwrap()).unwrap(), &names());

    // FreeSurfer LUT: comments, blank lines, index name R G B A; names without spaces.
    let lut = dir.path().join("FreeSurferColorLUT.txt");
    let fs = "#$Id: FreeSurferColorLUT.txt $\n\n#No. Label Name:                            R   G   B   A\n\n\
              0   Unknown                                 0   0   0   0\n\
              1   Left-Putamen                          236  13 176   0\n\
              2   Right-Putamen                         236  13 176   0\n\
              # a comment between rows\n\
              3   Left-Caudate                          122 186 220   0\n";
    std::fs::write(&lut, fs).unwrap();
    let a = Atlas::open(&format!("{},{}", img.display(), lut.display())).unwrap();
    let fs_names: BTreeMap<u32, String> =
        [(0, "Unknown"), (1, "Left-Putamen"), (2, "Right-Putamen"), (3, "Left-Caudate")]
            .map(|(k, n)| (k, n.to_string()))
            .into();
    // Value 4 is not in this LUT: unlabelled; value 0 ("Unknown") too.
    let mut oracle = fs_names.clone();
    oracle.remove(&0);
    check_label_atlas(&a, &oracle);
    assert_eq!(a.labels().count(), 4);
}

/// Probability (percent) of label `v` at voxel (i, j, k); zero everywhere at some voxels.
fn prob(v: usize, i: usize, j: usize, k: usize) -> f32 {
    if (i + j + k).is_multiple_of(6) {
        0.0
    } else {
        ((i * 7 + j * 13 + k * 5 + v * 29) % 97) as f32
    }
}

fn prob_data(nvol: usize) -> Vec<f32> {
    let mut d = Vec::new();
    for v in 0..nvol {
        for k in 0..DIMS[2] {
            for j in 0..DIMS[1] {
                for i in 0..DIMS[0] {
                    d.push(prob(v, i, j, k));
                }
            }
        }
    }
    d
}

const PROB_NAMES: [&str; 3] = ["Left Thalamus", "Right Thalamus", "Brain-Stem"];

fn prob_xml(ty: &str, labels: &[(u32, &str)]) -> String {
    let mut x = format!(
        "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>\n<atlas version=\"1.0\">\n<header>\n\
         <name>Test Subcortical Atlas</name>\n<shortname>TSA</shortname>\n<type>{ty}</type>\n\
         <images>\n<imagefile>/sub/prob-1mm</imagefile>\n<summaryimagefile>/sub/maxprob-1mm</summaryimagefile>\n</images>\n\
         <images>\n<imagefile>/sub/prob-2mm</imagefile>\n<summaryimagefile>/sub/maxprob-2mm</summaryimagefile>\n</images>\n\
         </header>\n<data>\n"
    );
    for (i, n) in labels {
        x.push_str(&format!("<label index=\"{i}\" x=\"4\" y=\"5\" z=\"3\">{n}</label>\n"));
    }
    x.push_str("</data>\n</atlas>\n");
    x
}

#[test]
fn probabilistic_fsl_xml() {
    let dir = voxflip_testkit::tempdir().unwrap();
    // Only the 2 mm entry (the second <images>) exists: it is the one used.
    write(&dir.path().join("sub/prob-2mm.nii.gz"), 3, &prob_data(3));
    let xml = dir.path().join("Test-Sub.xml");
    let labels: Vec<(u32, &str)> = PROB_NAMES.iter().enumerate().map(|(i, n)| (i as u32, *n)).collect();
    std::fs::write(&xml, prob_xml("Probabilistic", &labels)).unwrap();
    let a = Atlas::open(xml.to_str().unwrap()).unwrap();
    assert_eq!(a.kind(), AtlasKind::Probabilistic);
    assert_eq!(a.name, "Test Subcortical Atlas");
    let mut hits = 0;
    for mm in points() {
        // Oracle: argmax over volumes at the hand-computed voxel, first maximum wins.
        let want = voxel_by_hand(mm).and_then(|[i, j, k]| {
            let mut best: Option<(usize, f32)> = None;
            for v in 0..3 {
                let p = prob(v, i, j, k);
                if p > 0.0 && best.is_none_or(|(_, b)| p > b) {
                    best = Some((v, p));
                }
            }
            best.map(|(v, p)| Lookup { name: PROB_NAMES[v].to_string(), probability: Some(p) })
        });
        let got = a.label_at(mm);
        assert_eq!(got, want, "at {mm:?}");
        assert_eq!(a.region_of(mm), want.as_ref().map(|l| l.name.as_str()));
        if let Some(w) = &want {
            assert_eq!(Atlas::format(&got), format!("{}% {}", w.probability.unwrap() as u32, w.name));
            hits += 1;
        }
    }
    assert!(hits > 500);
    assert_eq!(
        Atlas::format(&Some(Lookup { name: "Left Putamen".into(), probability: Some(52.0) })),
        "52% Left Putamen"
    );
    assert_eq!(Atlas::format(&None), "n/a");
}

#[test]
fn label_fsl_xml_value_is_index_and_summary_is_index_plus_one() {
    // Type Label: the voxel value is the XML index (fslpy: "For label images, the index
    // field contains the region value").
    let dir = voxflip_testkit::tempdir().unwrap();
    write(&dir.path().join("sub/prob-2mm.nii.gz"), 1, &label_data());
    let xml = dir.path().join("lab.xml");
    let mut labels = vec![(0, "Unclassified")];
    labels.extend(NAMES);
    std::fs::write(&xml, prob_xml("Label", &labels)).unwrap();
    let a = Atlas::open(xml.to_str().unwrap()).unwrap();
    check_label_atlas(&a, &names());

    // A probabilistic atlas whose 4D image is missing: its summary image, where a region's
    // value is index + 1.
    let dir = voxflip_testkit::tempdir().unwrap();
    write(&dir.path().join("sub/maxprob-2mm.nii"), 1, &label_data());
    let xml = dir.path().join("sum.xml");
    let labels: Vec<(u32, &str)> = NAMES.iter().map(|&(v, n)| (v - 1, n)).collect();
    std::fs::write(&xml, prob_xml("Probabilistic", &labels)).unwrap();
    let a = Atlas::open(xml.to_str().unwrap()).unwrap();
    check_label_atlas(&a, &names());
}

fn open_err(spec: &str) -> String {
    let e = Atlas::open(spec).unwrap_err().to_string();
    assert!(!e.contains('\n'), "not one line: {e}");
    e
}

#[test]
fn errors_name_the_file() {
    let dir = voxflip_testkit::tempdir().unwrap();
    let d = dir.path();
    let img = d.join("lonely.nii.gz");
    write(&img, 1, &label_data());
    let e = open_err(img.to_str().unwrap());
    assert!(e.contains("lonely.nii.gz") && e.contains("no label table") && e.contains("lonely.tsv"), "{e}");

    let e = open_err(d.join("absent.nii.gz").to_str().unwrap());
    assert!(e.contains("absent.nii.gz") && e.contains("no such file"), "{e}");
    let e = open_err(d.join("absent.xml").to_str().unwrap());
    assert!(e.contains("absent.xml") && e.contains("no such file"), "{e}");

    let bad = d.join("bad.xml");
    std::fs::write(&bad, "<atlas><header><name>x</name></header>").unwrap();
    let e = open_err(bad.to_str().unwrap());
    assert!(e.contains("bad.xml") && e.contains("bad XML"), "{e}");

    let ty = d.join("type.xml");
    std::fs::write(&ty, prob_xml("Statistic", &[(0, "a")])).unwrap();
    let e = open_err(ty.to_str().unwrap());
    assert!(e.contains("type.xml") && e.contains("unknown atlas type \"Statistic\""), "{e}");

    let noimg = d.join("noimg.xml");
    std::fs::write(&noimg, prob_xml("Probabilistic", &[(0, "a")])).unwrap();
    let e = open_err(noimg.to_str().unwrap());
    assert!(e.contains("noimg.xml") && e.contains("atlas image not found") && e.contains("prob-1mm"), "{e}");

    let dup = d.join("dup.xml");
    std::fs::write(&dup, prob_xml("Label", &[(1, "a"), (1, "b")])).unwrap();
    let e = open_err(dup.to_str().unwrap());
    assert!(e.contains("dup.xml") && e.contains("duplicate label index 1"), "{e}");

    // Four labels, three volumes.
    write(&d.join("sub/prob-2mm.nii.gz"), 3, &prob_data(3));
    let few = d.join("few.xml");
    std::fs::write(&few, prob_xml("Probabilistic", &[(0, "a"), (1, "b"), (2, "c"), (3, "d")])).unwrap();
    let e = open_err(few.to_str().unwrap());
    assert!(e.contains("prob-2mm.nii.gz") && e.contains("3 volumes") && e.contains("index 3"), "{e}");

    let t = d.join("dup.tsv");
    std::fs::write(&t, "index\tname\n1\ta\n2\tb\n1\tc\n").unwrap();
    let e = open_err(&format!("{},{}", img.display(), t.display()));
    assert!(e.contains("dup.tsv") && e.contains("line 4: duplicate index 1"), "{e}");

    let t = d.join("empty.csv");
    std::fs::write(&t, "index,name\n\n# nothing\n").unwrap();
    let e = open_err(&format!("{},{}", img.display(), t.display()));
    assert!(e.contains("empty.csv") && e.contains("no rows"), "{e}");

    let t = d.join("cols.tsv");
    std::fs::write(&t, "id\tregion\n1\ta\n").unwrap();
    let e = open_err(&format!("{},{}", img.display(), t.display()));
    assert!(e.contains("cols.tsv") && e.contains("no index column"), "{e}");

    let t = d.join("badidx.tsv");
    std::fs::write(&t, "1\ta\nx2\tb\n").unwrap();
    let e = open_err(&format!("{},{}", img.display(), t.display()));
    assert!(e.contains("badidx.tsv") && e.contains("line 2: bad index \"x2\""), "{e}");

    let t = d.join("missing.tsv");
    let e = open_err(&format!("{},{}", img.display(), t.display()));
    assert!(e.contains("missing.tsv") && e.contains("no such file"), "{e}");

    // A 4D image is not a label image.
    let four = d.join("four.nii.gz");
    write(&four, 3, &prob_data(3));
    std::fs::write(d.join("four.tsv"), "1\ta\n").unwrap();
    let e = open_err(four.to_str().unwrap());
    assert!(e.contains("four.nii.gz") && e.contains("3 volumes"), "{e}");
}

/// Every test that reads or sets FSLDIR is here: tests share the process environment.
#[test]
fn fsldir_names() {
    let saved = std::env::var_os("FSLDIR");
    std::env::remove_var("FSLDIR");
    assert!(fsl_default_atlases().is_empty());
    let e = open_err("HarvardOxford-Subcortical");
    assert!(e.contains("HarvardOxford-Subcortical") && e.contains("FSLDIR is not set"), "{e}");

    let dir = voxflip_testkit::tempdir().unwrap();
    std::env::set_var("FSLDIR", dir.path());
    let atlases = dir.path().join("data/atlases");
    std::fs::create_dir_all(&atlases).unwrap();
    // No Harvard-Oxford XMLs yet.
    assert!(fsl_default_atlases().is_empty());
    let e = open_err("nope");
    assert!(e.contains("\"nope\"") && e.contains("no such atlas") && e.contains("available: none"), "{e}");

    let xml = atlases.join("HarvardOxford-Subcortical.xml");
    let labels: Vec<(u32, &str)> = PROB_NAMES.iter().enumerate().map(|(i, n)| (i as u32, *n)).collect();
    let text = prob_xml("Probabilistic", &labels)
        .replace("Test Subcortical Atlas", "Harvard-Oxford Subcortical Structural Atlas")
        .replace("TSA", "HOSPA")
        .replace("/sub/", "/HarvardOxford/");
    std::fs::write(&xml, text).unwrap();
    write(&atlases.join("HarvardOxford/prob-2mm.nii.gz"), 3, &prob_data(3));
    std::fs::write(
        atlases.join("Other.xml"),
        prob_xml("Label", &[(1, "a")]).replace("Test Subcortical Atlas", "Other Atlas"),
    )
    .unwrap();

    assert_eq!(fsl_default_atlases(), vec![xml.clone()]);
    for spec in [
        "HarvardOxford-Subcortical",
        "harvardoxford-subcortical",
        "Harvard-Oxford Subcortical Structural Atlas",
        "hospa",
    ] {
        let a = Atlas::open(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert_eq!(a.name, "Harvard-Oxford Subcortical Structural Atlas");
        assert_eq!(a.kind(), AtlasKind::Probabilistic);
        assert_eq!(a.source(), atlases.join("HarvardOxford/prob-2mm.nii.gz"));
    }
    let e = open_err("Juelich");
    assert!(e.contains("no such atlas") && e.contains("HarvardOxford-Subcortical, Other"), "{e}");

    std::fs::write(atlases.join("HarvardOxford-Cortical.xml"), "<atlas/>").unwrap();
    assert_eq!(fsl_default_atlases(), vec![atlases.join("HarvardOxford-Cortical.xml"), xml]);

    match saved {
        Some(v) => std::env::set_var("FSLDIR", v),
        None => std::env::remove_var("FSLDIR"),
    }
}
