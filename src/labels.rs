//! Anatomical labels for the cluster tables: the atlases of a run (--atlas, or FSL's
//! Harvard-Oxford when FSLDIR is set) and one label column per atlas beside each row's
//! peak coordinates.
use crate::error::{Error, Result};
use voxflip_atlas::Atlas;

/// The atlases named by `specs` (each opened now, so a bad one fails before any work), or
/// with none named, FSL's Harvard-Oxford cortical and subcortical atlases when FSLDIR
/// points at an FSL installation that has them.
pub fn open_atlases(specs: &[String]) -> Result<Vec<Atlas>> {
    if specs.is_empty() {
        return voxflip_atlas::fsl_default_atlases()
            .iter()
            .map(|p| Atlas::open(&p.display().to_string()).map_err(|e| Error::usage(e.to_string())))
            .collect();
    }
    specs.iter().map(|s| Atlas::open(s).map_err(|e| Error::usage(e.to_string()))).collect()
}

/// The TSV column of an atlas's labels.
fn column_name(atlas: &Atlas) -> String {
    let safe: String = atlas.name.chars().map(|c| if c.is_alphanumeric() || c == '-' { c } else { '_' }).collect();
    format!("label_{safe}")
}

/// `tsv` (a cluster or local-maximum table with a header) with its `label_*` columns
/// replaced by one per atlas: the label at the row's peak (`peak_x/y/z`, or `x/y/z`).
pub fn with_labels(tsv: &str, atlases: &[Atlas]) -> String {
    let mut lines = tsv.lines();
    let Some(header) = lines.next() else { return String::new() };
    let cols: Vec<&str> = header.split('\t').collect();
    let keep: Vec<usize> = (0..cols.len()).filter(|&i| !cols[i].starts_with("label_")).collect();
    let find = |names: [&str; 2]| cols.iter().position(|c| names.contains(c));
    let xyz = [find(["peak_x", "x"]), find(["peak_y", "y"]), find(["peak_z", "z"])];
    let mut out = String::new();
    let mut push_row = |fields: Vec<String>| {
        out.push_str(&fields.join("\t"));
        out.push('\n');
    };
    let mut head: Vec<String> = keep.iter().map(|&i| cols[i].to_string()).collect();
    head.extend(atlases.iter().map(column_name));
    push_row(head);
    for line in lines {
        let f: Vec<&str> = line.split('\t').collect();
        let mut row: Vec<String> = keep.iter().map(|&i| f.get(i).copied().unwrap_or("").to_string()).collect();
        let mm: Option<[f64; 3]> = match xyz {
            [Some(x), Some(y), Some(z)] => {
                (|| Some([f.get(x)?.parse().ok()?, f.get(y)?.parse().ok()?, f.get(z)?.parse().ok()?]))()
            }
            _ => None,
        };
        for a in atlases {
            row.push(Atlas::format(&mm.and_then(|mm| a.label_at(mm))));
        }
        push_row(row);
    }
    out
}
