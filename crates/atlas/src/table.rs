//! Label tables: value -> name.
//!
//! - TSV or CSV with a header naming an index column (`index`, `value` or `label`) and a
//!   name column (`name` or `label_name`), case-insensitive (BIDS `dseg.tsv`);
//! - header-less `index<TAB or ,>name` rows;
//! - a FreeSurfer colour LUT: whitespace-separated `index name R G B A`.
//!
//! `#` lines and blank lines are skipped. Index values must be non-negative integers.
use crate::AtlasError;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Copy, PartialEq)]
enum Delim {
    Tab,
    Comma,
    Space,
}

fn split(line: &str, d: Delim) -> Vec<String> {
    let unquote = |s: &str| {
        let s = s.trim();
        s.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(s).trim().to_string()
    };
    match d {
        Delim::Tab => line.split('\t').map(unquote).collect(),
        Delim::Comma => line.split(',').map(unquote).collect(),
        Delim::Space => line.split_whitespace().map(unquote).collect(),
    }
}

fn parse_index(s: &str) -> Option<u32> {
    if let Ok(v) = s.parse::<u32>() {
        return Some(v);
    }
    // "12.0" is an integer too.
    let f: f64 = s.parse().ok()?;
    (f >= 0.0 && f.fract() == 0.0 && f <= u32::MAX as f64).then_some(f as u32)
}

pub(crate) fn read_table(path: &Path) -> Result<BTreeMap<u32, String>, AtlasError> {
    let err = |msg: String| AtlasError::file(path, msg);
    let text = std::fs::read_to_string(path).map_err(|e| err(voxflip_io::io_msg(&e)))?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect();
    let Some(&(_, first)) = lines.first() else {
        return Err(err("label table has no rows".into()));
    };
    let delim = if first.contains('\t') {
        Delim::Tab
    } else if first.contains(',') {
        Delim::Comma
    } else {
        Delim::Space
    };
    let head = split(first, delim);
    let (icol, ncol, rows) = if head.first().is_some_and(|h| parse_index(h).is_some()) {
        (0, 1, &lines[..])
    } else {
        let lower: Vec<String> = head.iter().map(|h| h.to_ascii_lowercase()).collect();
        let find = |names: &[&str]| names.iter().find_map(|n| lower.iter().position(|h| h == n));
        let icol = find(&["index", "value", "label"])
            .ok_or_else(|| err(format!("header \"{first}\" has no index column (index, value or label)")))?;
        let ncol = find(&["name", "label_name"])
            .or_else(|| (lower[icol] != "label").then(|| find(&["label"])).flatten())
            .ok_or_else(|| err(format!("header \"{first}\" has no name column (name or label_name)")))?;
        (icol, ncol, &lines[1..])
    };
    let mut out = BTreeMap::new();
    for &(n, line) in rows {
        let f = split(line, delim);
        let (Some(i), Some(name)) = (f.get(icol), f.get(ncol)) else {
            return Err(err(format!("line {n}: expected an index and a name")));
        };
        let index = parse_index(i).ok_or_else(|| err(format!("line {n}: bad index \"{i}\"")))?;
        if name.is_empty() {
            return Err(err(format!("line {n}: empty name for index {index}")));
        }
        if out.insert(index, name.clone()).is_some() {
            return Err(err(format!("line {n}: duplicate index {index}")));
        }
    }
    if out.is_empty() {
        return Err(err("label table has no rows".into()));
    }
    Ok(out)
}
