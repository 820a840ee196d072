//! BIDS participants.tsv: participant_id plus a group column the user names.
//!
//! The file is tab-separated with a header row; BIDS requires a `participant_id` column and
//! writes missing values as `n/a`. A participant without a group cannot be placed in the
//! design, so that is an error naming the participant rather than a silent drop.
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::Path;

/// Participants and their group labels, in file order.
#[derive(Clone, Debug, PartialEq)]
pub struct Participants {
    /// participant_id values (e.g. "sub-01"), in file order.
    pub ids: Vec<String>,
    /// The group column's value for each participant, parallel to `ids`.
    pub groups: Vec<String>,
    /// All column names from the header row, in order.
    pub columns: Vec<String>,
}

impl Participants {
    /// Distinct group labels in order of first appearance (so the design's column order
    /// follows the file, not the alphabet).
    pub fn group_levels(&self) -> Vec<String> {
        let mut levels: Vec<String> = Vec::new();
        for g in &self.groups {
            if !levels.contains(g) {
                levels.push(g.clone());
            }
        }
        levels
    }
}

/// Read `path` and take the groups from `group_column`. Blank lines are skipped; fields are
/// trimmed of surrounding spaces (and a UTF-8 byte-order mark on the header).
pub fn read_participants(path: &Path, group_column: &str) -> Result<Participants> {
    let bytes = std::fs::read(path).map_err(|e| Error::input(path, format!("cannot read: {}", crate::io_msg(&e))))?;
    let text = String::from_utf8(bytes).map_err(|_| Error::input(path, "not UTF-8 text"))?;
    parse(&text, group_column).map_err(|msg| Error::input(path, msg))
}

fn parse(text: &str, group_column: &str) -> std::result::Result<Participants, String> {
    let split = |line: &str| -> Vec<String> { line.split('\t').map(|f| f.trim().to_string()).collect() };
    let mut lines =
        text.lines().enumerate().map(|(i, l)| (i + 1, l.trim_end_matches('\r'))).filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or("empty file (no header row)")?;
    let columns = split(header.trim_start_matches('\u{feff}'));
    let find = |name: &str| columns.iter().position(|c| c == name);
    let id_col = find("participant_id").ok_or_else(|| {
        let hint = if columns.len() == 1 && header.contains([',', ';']) {
            " (is it comma-separated? it must be tab-separated)"
        } else {
            ""
        };
        format!("no participant_id column (columns: {}){hint}", columns.join(", "))
    })?;
    let group_col =
        find(group_column).ok_or_else(|| format!("no column '{group_column}' (columns: {})", columns.join(", ")))?;

    let mut ids = Vec::new();
    let mut groups = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (lineno, line) in lines {
        let fields = split(line);
        if fields.len() != columns.len() {
            return Err(format!("line {lineno}: {} fields, but the header has {}", fields.len(), columns.len()));
        }
        let id = &fields[id_col];
        if id.is_empty() || id == "n/a" {
            return Err(format!("line {lineno}: empty participant_id"));
        }
        if let Some(first) = seen.insert(id.clone(), lineno) {
            return Err(format!("participant '{id}' appears twice (lines {first} and {lineno})"));
        }
        let group = &fields[group_col];
        if group.is_empty() || group == "n/a" {
            return Err(format!("line {lineno}: participant '{id}' has no value in column '{group_column}'"));
        }
        ids.push(id.clone());
        groups.push(group.clone());
    }
    if ids.is_empty() {
        return Err("no participants (only a header row)".into());
    }
    Ok(Participants { ids, groups, columns })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &voxflip_testkit::TempDir, text: &str) -> std::path::PathBuf {
        let p = dir.path().join("participants.tsv");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn err(text: &str, col: &str) -> String {
        let d = voxflip_testkit::tempdir().unwrap();
        let msg = read_participants(&write(&d, text), col).unwrap_err().to_string();
        assert!(!msg.contains('\n'), "multi-line: {msg}");
        assert!(msg.contains("participants.tsv: "), "{msg}");
        msg
    }

    #[test]
    fn reads_groups_in_file_order() {
        let d = voxflip_testkit::tempdir().unwrap();
        let text = "\u{feff}participant_id\tage\tgroup\r\nsub-01\t23\tcompassion\r\nsub-02\tn/a\tmemory\r\n\r\nsub-03\t31\tcompassion \r\n";
        let p = read_participants(&write(&d, text), "group").unwrap();
        assert_eq!(p.ids, vec!["sub-01", "sub-02", "sub-03"]);
        assert_eq!(p.groups, vec!["compassion", "memory", "compassion"]);
        assert_eq!(p.columns, vec!["participant_id", "age", "group"]);
        assert_eq!(p.group_levels(), vec!["compassion", "memory"]);
    }

    #[test]
    fn bad_files() {
        let m = err("id\tgroup\ns1\ta\n", "group");
        assert!(m.contains("no participant_id column (columns: id, group)"), "{m}");
        let m = err("participant_id,group\ns1,a\n", "group");
        assert!(m.contains("tab-separated"), "{m}");
        let m = err("participant_id\tage\tsex\ns1\t3\tF\n", "group");
        assert!(m.contains("no column 'group' (columns: participant_id, age, sex)"), "{m}");
        let m = err("participant_id\tgroup\ns1\ta\ns2\tb\ns1\tb\n", "group");
        assert!(m.contains("participant 's1' appears twice (lines 2 and 4)"), "{m}");
        let m = err("participant_id\tgroup\ns1\ta\ns2\tn/a\n", "group");
        assert!(m.contains("line 3: participant 's2' has no value in column 'group'"), "{m}");
        let m = err("participant_id\tgroup\ns1\ta\ns2\t\n", "group");
        assert!(m.contains("participant 's2' has no value"), "{m}");
        let m = err("participant_id\tgroup\ns1\ta\ns2\tb\textra\n", "group");
        assert!(m.contains("line 3: 3 fields, but the header has 2"), "{m}");
        let m = err("participant_id\tgroup\n", "group");
        assert!(m.contains("no participants"), "{m}");
        let m = err("", "group");
        assert!(m.contains("empty file"), "{m}");
    }
}
