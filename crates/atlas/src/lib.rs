//! Atlas look-ups: which region a world coordinate (mm) falls in.
//!
//! [`Atlas::open`] takes one of:
//! - an FSL atlas XML (`$FSLDIR/data/atlases/*.xml` format), of type `Label` (a 3D image
//!   whose voxel values are the XML label indices) or `Probabilistic` (a 4D image whose
//!   volume `index` holds the probability, 0..100, of label `index`);
//! - the name of an atlas under `$FSLDIR/data/atlases` (XML file stem, `<name>` or
//!   `<shortname>`, case-insensitive);
//! - a label image (.nii / .nii.gz) with a table: `IMAGE,TABLE`, or `IMAGE` with the table
//!   beside it (same stem + `.tsv`, `.csv`, `.txt` or `_LUT.txt`). Tables are TSV/CSV with
//!   an `index` and a `name` column (BIDS `dseg.tsv` style), header-less `index,name` rows,
//!   or a FreeSurfer colour LUT (`index name R G B A`).
//!
//! Look-ups take the nearest voxel (world -> voxel through the inverse affine, rounded).
//! Every error is one line that names the file ([`AtlasError`]).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use voxflip_io::Image;

mod table;
#[cfg(test)]
mod tests;

/// What went wrong opening an atlas: one line naming the file (or the atlas name).
#[derive(Debug, thiserror::Error)]
pub enum AtlasError {
    /// A problem with one file: `{path}: {msg}`.
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// A bare atlas name that could not be resolved: `atlas "{name}": {msg}`.
    #[error("atlas \"{name}\": {msg}")]
    Name { name: String, msg: String },
    /// Reading an image failed (the message names the image).
    #[error(transparent)]
    Image(#[from] voxflip_io::Error),
}

impl AtlasError {
    fn file(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        AtlasError::File { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }
}

/// The two kinds of atlas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtlasKind {
    /// A 3D image of integer region values; each value has a name.
    Label,
    /// A 4D image, one volume per region, holding its probability (percent, 0..100).
    Probabilistic,
}

/// The region found at a point.
#[derive(Clone, Debug, PartialEq)]
pub struct Lookup {
    pub name: String,
    /// For probabilistic atlases, the probability (percent, 0..100) of the most probable
    /// region; `None` for label atlases.
    pub probability: Option<f32>,
}

/// An opened atlas: its image and region names.
#[derive(Clone, Debug)]
pub struct Atlas {
    /// Display name: the XML `<name>`, or the label image's file stem.
    pub name: String,
    kind: AtlasKind,
    image: Image,
    /// Label atlases: image value -> name. Probabilistic: volume index -> name.
    labels: BTreeMap<u32, String>,
    /// World (mm) -> voxel, row-major 3x4 (the inverse of the image affine).
    world_to_voxel: [[f64; 4]; 3],
    source: PathBuf,
}

impl Atlas {
    /// Opens an atlas from an XML path, an `$FSLDIR` atlas name, `IMAGE,TABLE`, or a label
    /// image with its table beside it (see the crate documentation).
    pub fn open(spec: &str) -> Result<Atlas, AtlasError> {
        let spec = spec.trim();
        let path = Path::new(spec);
        if !path.exists() {
            if let Some((img, tab)) = spec.rsplit_once(',') {
                let (img, tab) = (img.trim(), tab.trim());
                if is_nifti(img) {
                    return Atlas::from_label_image(Path::new(img), Some(Path::new(tab)));
                }
            }
        }
        let lower = spec.to_ascii_lowercase();
        if lower.ends_with(".xml") {
            return Atlas::from_fsl_xml(path);
        }
        if is_nifti(spec) {
            return Atlas::from_label_image(path, None);
        }
        if !path.exists() && !spec.contains('/') && !spec.contains(std::path::MAIN_SEPARATOR) {
            return Atlas::from_fsl_xml(&resolve_fsl_name(spec)?);
        }
        if !path.exists() {
            return Err(AtlasError::file(path, "no such file"));
        }
        Err(AtlasError::file(
            path,
            "not an atlas (expected an FSL atlas .xml, a .nii/.nii.gz label image, or IMAGE,TABLE)",
        ))
    }

    /// Opens an FSL atlas XML file.
    pub fn from_fsl_xml(xml: &Path) -> Result<Atlas, AtlasError> {
        let spec = parse_fsl_xml(xml)?;
        let dir = xml.parent().unwrap_or(Path::new("."));
        let mut entries = Vec::new();
        for (image, summary) in &spec.images {
            entries.push((resolve_image(dir, image), summary.as_deref().map(|s| resolve_image(dir, s))));
        }
        if entries.is_empty() {
            return Err(AtlasError::file(xml, "no <images> entry in <header>"));
        }
        // The first <images> entry whose image exists. A probabilistic atlas whose 4D image
        // is missing falls back to its summary (max-probability) image, as a label atlas.
        let main = entries.iter().find_map(|(img, _)| img.found.clone());
        let (image_path, kind, summary) = match (spec.kind, main) {
            (kind, Some(p)) => (p, kind, false),
            (AtlasKind::Label, None) => {
                match entries.iter().find_map(|(_, s)| s.as_ref().and_then(|s| s.found.clone())) {
                    Some(p) => (p, AtlasKind::Label, false),
                    None => return Err(missing_image(xml, &entries[0].0.wanted)),
                }
            }
            (AtlasKind::Probabilistic, None) => {
                match entries.iter().find_map(|(_, s)| s.as_ref().and_then(|s| s.found.clone())) {
                    Some(p) => (p, AtlasKind::Label, true),
                    None => return Err(missing_image(xml, &entries[0].0.wanted)),
                }
            }
        };
        let image = voxflip_io::read_image(&image_path)?;
        let mut labels = BTreeMap::new();
        for (index, name) in spec.labels {
            // fslpy (fsl/data/atlases.py, AtlasDescription.__init__): "For label images, the
            // index field contains the region value" (value = index), while for
            // probabilistic atlases "the index field specifies the volume in the 4D atlas
            // ... It is assumed that the summary value for each region is index + 1".
            let key = if summary { index + 1 } else { index };
            labels.insert(key, name);
        }
        if kind == AtlasKind::Probabilistic {
            let max = labels.keys().next_back().copied().unwrap_or(0);
            if (max as usize) >= image.nvol {
                return Err(AtlasError::file(
                    &image_path,
                    format!(
                        "probabilistic atlas image has {} volumes, but {} lists label index {max}",
                        image.nvol,
                        xml.display()
                    ),
                ));
            }
        }
        Atlas::build(spec.name, kind, image, labels, &image_path)
    }

    /// Opens a label image with its table (`table` = None: look beside the image).
    pub fn from_label_image(image_path: &Path, table: Option<&Path>) -> Result<Atlas, AtlasError> {
        if !image_path.exists() {
            return Err(AtlasError::file(image_path, "no such file"));
        }
        let table = match table {
            Some(t) => t.to_path_buf(),
            None => find_table(image_path)?,
        };
        let labels = table::read_table(&table)?;
        let image = voxflip_io::read_image(image_path)?;
        if image.nvol != 1 {
            return Err(AtlasError::file(
                image_path,
                format!("a label image must be 3D, this one has {} volumes", image.nvol),
            ));
        }
        let name = nifti_stem(image_path);
        Atlas::build(name, AtlasKind::Label, image, labels, image_path)
    }

    fn build(
        name: String,
        kind: AtlasKind,
        image: Image,
        labels: BTreeMap<u32, String>,
        path: &Path,
    ) -> Result<Atlas, AtlasError> {
        let world_to_voxel =
            invert_affine(&image.affine).ok_or_else(|| AtlasError::file(path, "the image's affine is singular"))?;
        log::debug!("atlas {name}: {} labels from {}", labels.len(), path.display());
        Ok(Atlas { name, kind, image, labels, world_to_voxel, source: path.to_path_buf() })
    }

    pub fn kind(&self) -> AtlasKind {
        self.kind
    }

    /// The atlas image (3D for label atlases, 4D for probabilistic ones).
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// The image file the atlas was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// (key, name) for every region, by key: the image value for label atlases, the
    /// volume index for probabilistic ones.
    pub fn labels(&self) -> impl Iterator<Item = (u32, &str)> + '_ {
        self.labels.iter().map(|(&k, v)| (k, v.as_str()))
    }

    /// The name of a region by key (image value, or volume index for probabilistic atlases).
    pub fn label_name(&self, key: u32) -> Option<&str> {
        self.labels.get(&key).map(String::as_str)
    }

    /// The nearest voxel (i, j, k) to a world coordinate in mm, or None outside the image.
    pub fn voxel_of(&self, mm: [f64; 3]) -> Option<[usize; 3]> {
        let m = &self.world_to_voxel;
        let mut v = [0usize; 3];
        for (r, out) in v.iter_mut().enumerate() {
            let c = (m[r][0] * mm[0] + m[r][1] * mm[1] + m[r][2] * mm[2] + m[r][3]).round();
            if !c.is_finite() || c < 0.0 || c >= self.image.dims[r] as f64 {
                return None;
            }
            *out = c as usize;
        }
        Some(v)
    }

    /// The label-atlas value at a voxel (rounded to the nearest integer; None if negative).
    /// For probabilistic atlases this reads the first volume.
    pub fn value_at_voxel(&self, v: [usize; 3]) -> Option<u32> {
        let [nx, ny, _] = self.image.dims;
        let x = *self.image.data.get(v[0] + nx * (v[1] + ny * v[2]))?;
        let r = x.round();
        (r.is_finite() && r >= 0.0 && r <= u32::MAX as f32).then_some(r as u32)
    }

    /// The region at `mm`: (name, probability for probabilistic atlases).
    fn lookup(&self, mm: [f64; 3]) -> Option<(&str, Option<f32>)> {
        let v = self.voxel_of(mm)?;
        match self.kind {
            AtlasKind::Label => {
                let value = self.value_at_voxel(v)?;
                if value == 0 {
                    return None;
                }
                // A value the table does not name counts as unlabelled.
                self.label_name(value).map(|n| (n, None))
            }
            AtlasKind::Probabilistic => {
                let [nx, ny, _] = self.image.dims;
                let at = v[0] + nx * (v[1] + ny * v[2]);
                let nvox = self.image.nvox();
                let mut best: Option<(&str, f32)> = None;
                // Most probable label; ties go to the lowest index (BTreeMap order).
                for (&k, name) in &self.labels {
                    let p = self.image.data[at + nvox * k as usize];
                    if p > 0.0 && best.is_none_or(|(_, b)| p > b) {
                        best = Some((name.as_str(), p));
                    }
                }
                best.map(|(n, p)| (n, Some(p)))
            }
        }
    }

    /// The region at a world coordinate (mm): nearest voxel; for probabilistic atlases the
    /// most probable region and its probability. None outside the image or unlabelled.
    pub fn label_at(&self, mm: [f64; 3]) -> Option<Lookup> {
        self.lookup(mm).map(|(name, probability)| Lookup { name: name.to_string(), probability })
    }

    /// The region's name at a world coordinate (mm); see [`Atlas::label_at`].
    pub fn region_of(&self, mm: [f64; 3]) -> Option<&str> {
        self.lookup(mm).map(|(n, _)| n)
    }

    /// A look-up as a TSV cell: `Left Putamen`, `52% Left Putamen`, or `n/a`.
    pub fn format(l: &Option<Lookup>) -> String {
        match l {
            None => "n/a".to_string(),
            Some(Lookup { name, probability: None }) => name.clone(),
            Some(Lookup { name, probability: Some(p) }) => format!("{:.0}% {name}", p),
        }
    }
}

/// When `$FSLDIR` is set: the Harvard-Oxford cortical and subcortical atlas XMLs that
/// exist under `$FSLDIR/data/atlases`; else empty.
pub fn fsl_default_atlases() -> Vec<PathBuf> {
    let Some(dir) = fsl_atlas_dir() else { return Vec::new() };
    ["HarvardOxford-Cortical.xml", "HarvardOxford-Subcortical.xml"]
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.is_file())
        .collect()
}

fn fsl_atlas_dir() -> Option<PathBuf> {
    let d = std::env::var_os("FSLDIR")?;
    (!d.is_empty()).then(|| PathBuf::from(d).join("data").join("atlases"))
}

/// `$FSLDIR/data/atlases/*.xml` whose file stem, `<name>` or `<shortname>` is `name`.
fn resolve_fsl_name(name: &str) -> Result<PathBuf, AtlasError> {
    let err = |msg: String| AtlasError::Name { name: name.to_string(), msg };
    let dir = fsl_atlas_dir()
        .ok_or_else(|| err("not a file, and FSLDIR is not set to look it up in $FSLDIR/data/atlases".to_string()))?;
    let rd = std::fs::read_dir(&dir)
        .map_err(|e| err(format!("cannot read {}: {}", dir.display(), voxflip_io::io_msg(&e))))?;
    let mut xmls: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("xml")))
        .collect();
    xmls.sort();
    let stem = |p: &Path| p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    if let Some(p) = xmls.iter().find(|p| stem(p).eq_ignore_ascii_case(name)) {
        return Ok(p.clone());
    }
    for p in &xmls {
        if let Ok(spec) = parse_fsl_xml(p) {
            if spec.name.eq_ignore_ascii_case(name)
                || spec.shortname.as_deref().is_some_and(|s| s.eq_ignore_ascii_case(name))
            {
                return Ok(p.clone());
            }
        }
    }
    let names: Vec<String> = xmls.iter().map(|p| stem(p)).collect();
    let list = if names.is_empty() {
        "none".to_string()
    } else if names.len() > 12 {
        format!("{}, ... ({} in all)", names[..12].join(", "), names.len())
    } else {
        names.join(", ")
    };
    Err(err(format!("no such atlas in {} (available: {list})", dir.display())))
}

/// What an FSL atlas XML says.
struct FslXml {
    name: String,
    shortname: Option<String>,
    kind: AtlasKind,
    /// (imagefile, summaryimagefile) per `<images>` entry, as written.
    images: Vec<(String, Option<String>)>,
    /// (index, name) per `<label>`.
    labels: Vec<(u32, String)>,
}

fn parse_fsl_xml(xml: &Path) -> Result<FslXml, AtlasError> {
    let err = |msg: String| AtlasError::file(xml, msg);
    let text = std::fs::read_to_string(xml).map_err(|e| err(voxflip_io::io_msg(&e)))?;
    let doc = roxmltree::Document::parse(&text).map_err(|e| err(format!("bad XML: {e}")))?;
    let root = doc.root_element();
    if !root.has_tag_name("atlas") {
        return Err(err(format!("not an FSL atlas (root element <{}>, expected <atlas>)", root.tag_name().name())));
    }
    let header = child(root, "header").ok_or_else(|| err("no <header> element".into()))?;
    let name = child(header, "name")
        .and_then(text_of)
        .unwrap_or_else(|| xml.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
    let shortname = child(header, "shortname").and_then(text_of);
    let ty = child(header, "type").and_then(text_of).ok_or_else(|| err("no <type> in <header>".into()))?;
    let kind = match ty.to_ascii_lowercase().as_str() {
        "label" => AtlasKind::Label,
        // "Probabalistic": a spelling some FSL atlas files use (fslpy accepts it too).
        "probabilistic" | "probabalistic" => AtlasKind::Probabilistic,
        _ => return Err(err(format!("unknown atlas type \"{ty}\" (expected Label or Probabilistic)"))),
    };
    let mut images = Vec::new();
    for im in header.children().filter(|c| c.has_tag_name("images")) {
        let file =
            child(im, "imagefile").and_then(text_of).ok_or_else(|| err("<images> without <imagefile>".into()))?;
        images.push((file, child(im, "summaryimagefile").and_then(text_of)));
    }
    let data = child(root, "data").ok_or_else(|| err("no <data> element".into()))?;
    let mut labels = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for l in data.children().filter(|c| c.has_tag_name("label")) {
        let line = doc.text_pos_at(l.range().start).row;
        let idx = l.attribute("index").ok_or_else(|| err(format!("line {line}: <label> without index")))?;
        let index: u32 = idx.trim().parse().map_err(|_| err(format!("line {line}: bad label index \"{idx}\"")))?;
        if !seen.insert(index) {
            return Err(err(format!("line {line}: duplicate label index {index}")));
        }
        let name: String = l.text().unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" ");
        labels.push((index, name));
    }
    if labels.is_empty() {
        return Err(err("no <label> entries in <data>".into()));
    }
    Ok(FslXml { name, shortname, kind, images, labels })
}

fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, tag: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(tag))
}

fn text_of(n: roxmltree::Node<'_, '_>) -> Option<String> {
    n.text().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
}

/// An atlas image path from the XML: where it was looked for, and where it was found.
struct ImageRef {
    wanted: PathBuf,
    found: Option<PathBuf>,
}

/// FSL image paths are relative to the XML's directory, even with a leading '/' (fslpy joins
/// the directory and the path as strings), and usually omit the extension.
fn resolve_image(dir: &Path, file: &str) -> ImageRef {
    let wanted = dir.join(file.trim_start_matches('/'));
    let s = wanted.to_string_lossy().into_owned();
    let candidates = [PathBuf::from(format!("{s}.nii.gz")), PathBuf::from(format!("{s}.nii")), wanted.clone()];
    let found = candidates.into_iter().find(|p| p.is_file());
    ImageRef { wanted, found }
}

fn missing_image(xml: &Path, wanted: &Path) -> AtlasError {
    AtlasError::file(xml, format!("atlas image not found: {}(.nii.gz|.nii)", wanted.display()))
}

fn is_nifti(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    l.ends_with(".nii") || l.ends_with(".nii.gz")
}

/// The file name without .nii / .nii.gz.
fn nifti_stem(p: &Path) -> String {
    let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let l = n.to_ascii_lowercase();
    let cut = if l.ends_with(".nii.gz") {
        7
    } else if l.ends_with(".nii") {
        4
    } else {
        0
    };
    n[..n.len() - cut].to_string()
}

/// The label table beside a label image: same stem + .tsv, .csv, .txt or _LUT.txt.
fn find_table(image: &Path) -> Result<PathBuf, AtlasError> {
    let stem = nifti_stem(image);
    let dir = image.parent().unwrap_or(Path::new(""));
    let names: Vec<String> = [".tsv", ".csv", ".txt", "_LUT.txt"].iter().map(|s| format!("{stem}{s}")).collect();
    names.iter().map(|n| dir.join(n)).find(|p| p.is_file()).ok_or_else(|| {
        AtlasError::file(image, format!("no label table beside it (looked for {}); give IMAGE,TABLE", names.join(", ")))
    })
}

/// Inverse of a 3x4 affine (the 4th row being 0 0 0 1); None when singular.
fn invert_affine(a: &[[f64; 4]; 3]) -> Option<[[f64; 4]; 3]> {
    let m = |r: usize, c: usize| a[r][c];
    let det = m(0, 0) * (m(1, 1) * m(2, 2) - m(1, 2) * m(2, 1)) - m(0, 1) * (m(1, 0) * m(2, 2) - m(1, 2) * m(2, 0))
        + m(0, 2) * (m(1, 0) * m(2, 1) - m(1, 1) * m(2, 0));
    if !det.is_finite() || det.abs() < 1e-12 {
        return None;
    }
    let inv = [
        [
            (m(1, 1) * m(2, 2) - m(1, 2) * m(2, 1)) / det,
            (m(0, 2) * m(2, 1) - m(0, 1) * m(2, 2)) / det,
            (m(0, 1) * m(1, 2) - m(0, 2) * m(1, 1)) / det,
        ],
        [
            (m(1, 2) * m(2, 0) - m(1, 0) * m(2, 2)) / det,
            (m(0, 0) * m(2, 2) - m(0, 2) * m(2, 0)) / det,
            (m(0, 2) * m(1, 0) - m(0, 0) * m(1, 2)) / det,
        ],
        [
            (m(1, 0) * m(2, 1) - m(1, 1) * m(2, 0)) / det,
            (m(0, 1) * m(2, 0) - m(0, 0) * m(2, 1)) / det,
            (m(0, 0) * m(1, 1) - m(0, 1) * m(1, 0)) / det,
        ],
    ];
    let mut out = [[0.0; 4]; 3];
    for r in 0..3 {
        out[r][..3].copy_from_slice(&inv[r]);
        out[r][3] = -(inv[r][0] * a[0][3] + inv[r][1] * a[1][3] + inv[r][2] * a[2][3]);
    }
    Some(out)
}
