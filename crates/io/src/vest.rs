//! FSL VEST text matrices: design.mat, design.con, design.fts, design.grp.
//!
//! A VEST file is a few `/Key value...` header lines, then `/Matrix`, then one row per
//! line of whitespace-separated numbers. FSL's tools (Text2Vest, Glm) write them, and
//! users also hand us plain whitespace matrices with no header; both are accepted. Every
//! check names the file and, where it helps, the line, in one line of text.
use crate::error::{Error, Result};
use std::path::Path;

/// A matrix read from a VEST (or plain text) file.
#[derive(Clone, Debug, PartialEq)]
pub struct Vest {
    /// The rows, each of length `ncols`.
    pub rows: Vec<Vec<f64>>,
    /// Number of columns (/NumWaves).
    pub ncols: usize,
    /// Names from `/ContrastName{i}` lines, one per row when any are given (missing ones
    /// are filled with "C{i}"); empty when the file has none. `read_contrasts` always fills.
    pub names: Vec<String>,
}

/// Which header line gives the expected row count.
#[derive(Clone, Copy, PartialEq)]
enum RowsKey {
    NumPoints,
    NumContrasts,
    /// Either (plain `read_vest`): whichever of the two is present.
    Any,
}

/// Read any VEST matrix; the row count is checked against /NumPoints or /NumContrasts,
/// whichever the file gives.
pub fn read_vest(path: &Path) -> Result<Vest> {
    parse(path, RowsKey::Any)
}

/// Read a design matrix (design.mat): rows are subjects (/NumPoints), columns EVs.
pub fn read_design(path: &Path) -> Result<Vest> {
    parse(path, RowsKey::NumPoints)
}

/// Read contrasts (design.con): one row per contrast (/NumContrasts). Names come from
/// `/ContrastName{i}` and default to "C1", "C2", ... as randomise numbers them.
pub fn read_contrasts(path: &Path) -> Result<Vest> {
    let mut v = parse(path, RowsKey::NumContrasts)?;
    fill_names(&mut v);
    Ok(v)
}

/// Read F-test definitions (design.fts): one row per F-test, one column per contrast, each
/// value 0 or 1 (include that contrast in the F-test).
pub fn read_fts(path: &Path) -> Result<Vest> {
    let v = parse(path, RowsKey::NumContrasts)?;
    for (r, row) in v.rows.iter().enumerate() {
        if let Some(x) = row.iter().find(|&&x| x != 0.0 && x != 1.0) {
            return Err(Error::input(path, format!("F-test {}: value {x} is not 0 or 1", r + 1)));
        }
        if row.iter().all(|&x| x == 0.0) {
            return Err(Error::input(path, format!("F-test {} includes no contrast", r + 1)));
        }
    }
    Ok(v)
}

/// Read exchangeability / variance groups (design.grp): one integer per subject
/// (/NumPoints rows, one column). Negative values are kept (PALM uses them for blocks
/// that are exchanged as wholes).
pub fn read_grp(path: &Path) -> Result<Vec<i64>> {
    let v = parse(path, RowsKey::NumPoints)?;
    if v.ncols != 1 {
        return Err(Error::input(path, format!("expected one column of group numbers, found {}", v.ncols)));
    }
    v.rows
        .iter()
        .enumerate()
        .map(|(r, row)| {
            let x = row[0];
            if x.fract() != 0.0 || x.abs() > 1e15 {
                Err(Error::input(path, format!("row {}: group {x} is not an integer", r + 1)))
            } else {
                Ok(x as i64)
            }
        })
        .collect()
}

fn fill_names(v: &mut Vest) {
    v.names.resize(v.rows.len(), String::new());
    for (i, n) in v.names.iter_mut().enumerate() {
        if n.is_empty() {
            *n = format!("C{}", i + 1);
        }
    }
}

fn parse(path: &Path, rows_key: RowsKey) -> Result<Vest> {
    let text = std::fs::read(path).map_err(|e| Error::input(path, format!("cannot read: {}", crate::io_msg(&e))))?;
    let text = String::from_utf8_lossy(&text);
    parse_text(&text, rows_key).map_err(|msg| Error::input(path, msg))
}

/// Parse the text; errors are messages without the file name.
fn parse_text(text: &str, rows_key: RowsKey) -> std::result::Result<Vest, String> {
    let mut num_waves: Option<(usize, usize)> = None; // (value, line)
    let mut num_points: Option<usize> = None;
    let mut num_contrasts: Option<usize> = None;
    let mut names: Vec<(usize, String)> = Vec::new(); // (index from 1, name)
    let mut has_header = false;
    let mut in_matrix = false;
    let mut rows: Vec<Vec<f64>> = Vec::new();
    let mut first_row_line = 0;

    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        let line = line.trim_start_matches('\u{feff}').trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('/') {
            if in_matrix {
                return Err(format!("line {lineno}: header line '{line}' after /Matrix"));
            }
            has_header = true;
            let (key, value) = match rest.split_once(char::is_whitespace) {
                Some((k, v)) => (k, v.trim()),
                None => (rest, ""),
            };
            let count = |what: &str| -> std::result::Result<usize, String> {
                value.parse::<usize>().map_err(|_| format!("line {lineno}: /{what} '{value}' is not a whole number"))
            };
            match key {
                "Matrix" => in_matrix = true,
                "NumWaves" => num_waves = Some((count("NumWaves")?, lineno)),
                "NumPoints" => num_points = Some(count("NumPoints")?),
                "NumContrasts" => num_contrasts = Some(count("NumContrasts")?),
                k if k.starts_with("ContrastName") => {
                    let idx = k["ContrastName".len()..].parse::<usize>().ok().filter(|&n| n >= 1).ok_or_else(|| {
                        format!("line {lineno}: '/{k}' should be /ContrastName1, /ContrastName2, ...")
                    })?;
                    names.push((idx, value.to_string()));
                }
                // /PPheights, /RequiredEffect and others carry nothing we use.
                _ => {}
            }
            continue;
        }
        if has_header && !in_matrix {
            return Err(format!("line {lineno}: numbers before the /Matrix line"));
        }
        let mut row = Vec::new();
        for tok in line.split_whitespace() {
            let x: f64 = tok.parse().map_err(|_| format!("line {lineno}: '{tok}' is not a number"))?;
            if !x.is_finite() {
                return Err(format!("line {lineno}: '{tok}' is not a finite number"));
            }
            row.push(x);
        }
        if let Some(first) = rows.first() {
            if row.len() != first.len() {
                return Err(format!(
                    "line {lineno}: {} values, but line {first_row_line} has {}",
                    row.len(),
                    first.len()
                ));
            }
        } else {
            first_row_line = lineno;
        }
        rows.push(row);
    }

    if has_header && !in_matrix {
        return Err("no /Matrix line".into());
    }
    if rows.is_empty() {
        return Err("no matrix rows".into());
    }
    let ncols = rows[0].len();
    if let Some((nw, line)) = num_waves {
        if nw != ncols {
            return Err(format!("line {line}: /NumWaves is {nw} but the rows have {ncols} values"));
        }
    }
    let expected = match rows_key {
        RowsKey::NumPoints => num_points.map(|n| ("NumPoints", n)),
        RowsKey::NumContrasts => num_contrasts.map(|n| ("NumContrasts", n)),
        RowsKey::Any => num_points.map(|n| ("NumPoints", n)).or(num_contrasts.map(|n| ("NumContrasts", n))),
    };
    if let Some((key, n)) = expected {
        if n != rows.len() {
            return Err(format!("/{key} is {n} but the matrix has {} rows", rows.len()));
        }
    }
    let mut vest = Vest { rows, ncols, names: Vec::new() };
    if !names.is_empty() {
        let nrows = vest.rows.len();
        if let Some((idx, _)) = names.iter().find(|(idx, _)| *idx > nrows) {
            return Err(format!("/ContrastName{idx} but the matrix has {nrows} rows"));
        }
        vest.names = vec![String::new(); nrows];
        for (idx, name) in names {
            vest.names[idx - 1] = name;
        }
        fill_names(&mut vest);
    }
    Ok(vest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &voxflip_testkit::TempDir, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn err_of(r: Result<impl std::fmt::Debug>) -> String {
        let msg = r.unwrap_err().to_string();
        assert!(!msg.contains('\n'), "multi-line: {msg}");
        msg
    }

    const DESIGN: &str = "/NumWaves\t2\n/NumPoints\t4\n/PPheights\t1\t1\n\n/Matrix\n1 0\n1 0\n0 1\n0 1.5e0\n";
    const CON: &str = "/ContrastName1\tA > B\n/ContrastName2\tB > A\n/NumWaves\t2\n/NumContrasts\t2\n/PPheights 1 1\n/RequiredEffect 1.2 1.2\n\n/Matrix\n1 -1\n-1 1\n";

    #[test]
    fn reads_design_contrasts_fts_grp() {
        let d = voxflip_testkit::tempdir().unwrap();
        let v = read_design(&write(&d, "design.mat", DESIGN)).unwrap();
        assert_eq!(v.ncols, 2);
        assert_eq!(v.rows, vec![vec![1.0, 0.0], vec![1.0, 0.0], vec![0.0, 1.0], vec![0.0, 1.5]]);
        assert!(v.names.is_empty());

        let c = read_contrasts(&write(&d, "design.con", CON)).unwrap();
        assert_eq!(c.rows, vec![vec![1.0, -1.0], vec![-1.0, 1.0]]);
        assert_eq!(c.names, vec!["A > B", "B > A"]);

        // Plain matrix, CRLF line ends, no names -> C1, C2.
        let c = read_contrasts(&write(&d, "plain.con", "1 0 0\r\n0 1 0\r\n")).unwrap();
        assert_eq!((c.ncols, c.names.clone()), (3, vec!["C1".to_string(), "C2".to_string()]));
        let v = read_vest(&write(&d, "plain.mat", "  1\t2 3\n\n4 5 6  \n")).unwrap();
        assert_eq!(v.rows, vec![vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0]]);

        let f = read_fts(&write(&d, "design.fts", "/NumWaves 2\n/NumContrasts 1\n/Matrix\n1 1\n")).unwrap();
        assert_eq!(f.rows, vec![vec![1.0, 1.0]]);

        let g = read_grp(&write(&d, "design.grp", "/NumWaves 1\n/NumPoints 3\n/Matrix\n1\n2\n-1\n")).unwrap();
        assert_eq!(g, vec![1, 2, -1]);
    }

    #[test]
    fn bad_files_are_reported_with_file_and_line() {
        let d = voxflip_testkit::tempdir().unwrap();
        let bad_num = DESIGN.replace("0 1.5e0", "0 abc");
        let m = err_of(read_design(&write(&d, "design.mat", &bad_num)));
        assert!(m.ends_with("design.mat: line 9: 'abc' is not a number"), "{m}");

        let m = err_of(read_design(&write(&d, "nan.mat", "1 nan\n")));
        assert!(m.contains("line 1: 'nan' is not a finite number"), "{m}");

        let m = err_of(read_design(&write(&d, "ragged.mat", "1 0\n1\n")));
        assert!(m.contains("ragged.mat: line 2: 1 values, but line 1 has 2"), "{m}");

        let m = err_of(read_design(&write(&d, "waves.mat", &DESIGN.replace("NumWaves\t2", "NumWaves\t3"))));
        assert!(m.contains("line 1: /NumWaves is 3 but the rows have 2 values"), "{m}");

        let m = err_of(read_design(&write(&d, "points.mat", &DESIGN.replace("NumPoints\t4", "NumPoints\t5"))));
        assert!(m.contains("/NumPoints is 5 but the matrix has 4 rows"), "{m}");

        let m = err_of(read_contrasts(&write(&d, "n.con", &CON.replace("NumContrasts\t2", "NumContrasts\t3"))));
        assert!(m.contains("/NumContrasts is 3 but the matrix has 2 rows"), "{m}");

        let m = err_of(read_design(&write(&d, "nomatrix.mat", "/NumWaves 2\n/NumPoints 0\n")));
        assert!(m.contains("no /Matrix line"), "{m}");
        let m = err_of(read_design(&write(&d, "early.mat", "/NumWaves 2\n1 0\n/Matrix\n")));
        assert!(m.contains("line 2: numbers before the /Matrix line"), "{m}");
        let m = err_of(read_design(&write(&d, "empty.mat", "\n\n")));
        assert!(m.contains("no matrix rows"), "{m}");
        let m = err_of(read_design(&write(&d, "hdr.mat", "/NumWaves two\n/Matrix\n1\n")));
        assert!(m.contains("line 1: /NumWaves 'two' is not a whole number"), "{m}");
        let m = err_of(read_design(&d.path().join("missing.mat")));
        assert!(m.contains("missing.mat: cannot read: no such file"), "{m}");

        let m = err_of(read_fts(&write(&d, "design.fts", "1 2\n")));
        assert!(m.contains("F-test 1: value 2 is not 0 or 1"), "{m}");
        let m = err_of(read_fts(&write(&d, "zero.fts", "0 0\n")));
        assert!(m.contains("F-test 1 includes no contrast"), "{m}");
        let m = err_of(read_grp(&write(&d, "design.grp", "1\n1.5\n")));
        assert!(m.contains("row 2: group 1.5 is not an integer"), "{m}");
        let m = err_of(read_grp(&write(&d, "two.grp", "1 1\n2 2\n")));
        assert!(m.contains("expected one column"), "{m}");
        let m = err_of(read_contrasts(&write(&d, "name.con", "/ContrastName3 x\n/Matrix\n1\n")));
        assert!(m.contains("/ContrastName3 but the matrix has 1 rows"), "{m}");
    }
}
