//! Designs and contrasts, validated against the data, in the form `glm` takes.
//!
//! Three ways to get one: FSL VEST matrices (design.mat / design.con / design.fts, read by
//! the I/O crate), the one-sample test (`-1` without `-d`), and the group-by-time interaction built from
//! participants' groups.
use crate::model::{ColumnDependency, ContrastModel};
use crate::problem::StatKind;
use nalgebra::DMatrix;

/// A contrast as the user gave it: `c` is r x s (one column per contrast row).
#[derive(Clone, Debug)]
pub struct Contrast {
    /// Output name, randomise style: "tstat1", "fstat1", ...
    pub name: String,
    pub kind: StatKind,
    pub c: DMatrix<f64>,
}

/// A matrix as a VEST file holds it, with a label for messages (the file's name): rows of
/// `ncols` numbers and, for contrasts, one name per row (may be empty).
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    pub label: &'a str,
    pub rows: &'a [Vec<f64>],
    pub ncols: usize,
    pub names: &'a [String],
}

/// What is wrong with a design, by the input at fault, so that the caller can name its file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DesignError {
    /// The design matrix (design.mat).
    #[error("{0}")]
    Design(String),
    /// The contrasts (design.con).
    #[error("{0}")]
    Contrasts(String),
    /// The F-tests (design.fts).
    #[error("{0}")]
    FTests(String),
}

/// A validated design: M (N x r) and its contrasts (t contrasts first, then F).
#[derive(Clone, Debug)]
pub struct Design {
    pub m: DMatrix<f64>,
    pub contrasts: Vec<Contrast>,
    /// Human-readable column names (for the sidecar).
    pub column_names: Vec<String>,
    /// Human-readable contrast labels, parallel to `contrasts`.
    pub contrast_labels: Vec<String>,
}

impl Design {
    /// The one-sample design: a column of ones, contrast [1].
    pub fn one_sample(n: usize) -> Design {
        Design {
            m: DMatrix::from_element(n, 1, 1.0),
            contrasts: vec![Contrast { name: "tstat1".into(), kind: StatKind::T, c: DMatrix::from_element(1, 1, 1.0) }],
            column_names: vec!["mean".into()],
            contrast_labels: vec!["mean > 0".into()],
        }
    }

    /// The same design with the t contrasts dropped (randomise --fonly).
    pub fn f_tests_only(self) -> Design {
        self.keep_contrasts(|c| c.kind == StatKind::F)
    }

    /// The same design with only the contrasts `keep` accepts (their names unchanged).
    pub fn keep_contrasts(mut self, keep: impl Fn(&Contrast) -> bool) -> Design {
        let keep: Vec<bool> = self.contrasts.iter().map(keep).collect();
        let mut k = keep.iter();
        self.contrasts.retain(|_| *k.next().unwrap());
        let mut k = keep.iter();
        self.contrast_labels.retain(|_| *k.next().unwrap());
        self
    }

    /// The design from VEST matrices (design.mat, design.con, optionally design.fts) for
    /// `n` images, validated: every contrast must partition the design (see [`Design::validate`]).
    pub fn from_matrices(
        n: usize,
        mat: &Matrix,
        con: &Matrix,
        fts: Option<&Matrix>,
    ) -> std::result::Result<Design, DesignError> {
        if mat.rows.len() != n {
            return Err(DesignError::Design(format!(
                "has {} rows but the input has {} volumes: one row per volume is needed",
                mat.rows.len(),
                n
            )));
        }
        let r = mat.ncols;
        if r == 0 {
            return Err(DesignError::Design("has no columns".into()));
        }
        let m = DMatrix::from_fn(n, r, |i, k| mat.rows[i][k]);
        if con.ncols != r {
            return Err(DesignError::Contrasts(format!(
                "contrasts have {} columns but {} has {}",
                con.ncols, mat.label, r
            )));
        }
        let mut contrasts = Vec::new();
        let mut labels = Vec::new();
        for (k, row) in con.rows.iter().enumerate() {
            contrasts.push(Contrast {
                name: format!("tstat{}", k + 1),
                kind: StatKind::T,
                c: DMatrix::from_column_slice(r, 1, row),
            });
            labels.push(con.names.get(k).cloned().unwrap_or_else(|| format!("C{}", k + 1)));
        }
        if let Some(f) = fts {
            if f.ncols != con.rows.len() {
                return Err(DesignError::FTests(format!(
                    "has {} columns but {} has {} contrasts",
                    f.ncols,
                    con.label,
                    con.rows.len()
                )));
            }
            for (k, row) in f.rows.iter().enumerate() {
                let picked: Vec<usize> = (0..row.len()).filter(|&i| row[i] != 0.0).collect();
                if picked.is_empty() {
                    return Err(DesignError::FTests(format!("F-test {} selects no contrast", k + 1)));
                }
                let c = DMatrix::from_fn(r, picked.len(), |i, j| con.rows[picked[j]][i]);
                contrasts.push(Contrast { name: format!("fstat{}", k + 1), kind: StatKind::F, c });
                labels
                    .push(format!("F({})", picked.iter().map(|p| format!("C{}", p + 1)).collect::<Vec<_>>().join(",")));
            }
        }
        let design =
            Design { m, contrasts, column_names: (1..=r).map(|k| format!("EV{k}")).collect(), contrast_labels: labels };
        design.validate_against(mat.label)?;
        Ok(design)
    }

    /// Group-by-time on post - pre differences: cell-means coding [g_A, g_B].
    /// Contrasts: tstat1 A > B, tstat2 B > A (the interaction, both directions) and
    /// tstat3 the time effect across all subjects (grand mean of the differences > 0,
    /// weights n_A/N and n_B/N).
    pub fn group_by_time(groups: &[usize], names: &[String; 2]) -> Design {
        let n = groups.len();
        let na = groups.iter().filter(|&&g| g == 0).count() as f64;
        let nb = n as f64 - na;
        let m = DMatrix::from_fn(n, 2, |i, k| if groups[i] == k { 1.0 } else { 0.0 });
        let t = |name: &str, w: [f64; 2]| Contrast {
            name: name.into(),
            kind: StatKind::T,
            c: DMatrix::from_column_slice(2, 1, &w),
        };
        Design {
            m,
            contrasts: vec![
                t("tstat1", [1.0, -1.0]),
                t("tstat2", [-1.0, 1.0]),
                t("tstat3", [na / n as f64, nb / n as f64]),
            ],
            column_names: vec![names[0].clone(), names[1].clone()],
            contrast_labels: vec![
                format!("interaction: {} > {} in post - pre", names[0], names[1]),
                format!("interaction: {} > {} in post - pre", names[1], names[0]),
                "time: post > pre across all subjects".into(),
            ],
        }
    }

    /// -D: demean the design's columns, drop those that become zero (an intercept), and
    /// model the mean with an intercept as nuisance, so the fit equals the model with an
    /// intercept (and the degrees of freedom count it).
    ///
    /// A design whose columns already span the constant (an intercept column, or group
    /// indicators that sum to one) models the mean already: demeaned, its columns would be
    /// linearly dependent. Then the design is kept as it is, which gives what demeaning
    /// means for every contrast that leaves the mean as nuisance; a contrast that tests the
    /// mean is refused (demeaned data have none to test).
    pub fn demeaned(&self) -> std::result::Result<Design, DesignError> {
        let (n, r) = self.m.shape();
        let ones = nalgebra::DVector::from_element(n, 1.0);
        let basis = crate::model::column_basis(&self.m);
        if (&ones - &basis * (basis.transpose() * &ones)).norm() <= 1e-8 * (n as f64).sqrt() {
            for c in &self.contrasts {
                let model = ContrastModel::new(&self.m, c).map_err(DesignError::Design)?;
                if model.tests_constant() {
                    return Err(DesignError::Design(format!(
                        "-D removes the mean, but contrast {} tests it: drop -D (or that contrast)",
                        c.name
                    )));
                }
            }
            return Ok(self.clone());
        }
        let mut cols: Vec<Vec<f64>> = Vec::new();
        let mut kept = Vec::new();
        for k in 0..r {
            let col: Vec<f64> = self.m.column(k).iter().copied().collect();
            let mean = col.iter().sum::<f64>() / n as f64;
            let dm: Vec<f64> = col.iter().map(|x| x - mean).collect();
            let scale = col.iter().fold(0f64, |a, x| a.max(x.abs())).max(1e-300);
            if dm.iter().all(|x| x.abs() <= 1e-12 * scale) {
                for c in &self.contrasts {
                    if c.c.row(k).iter().any(|&w| w != 0.0) {
                        return Err(DesignError::Design(format!(
                            "-D removes column {} (constant), but contrast {} uses it",
                            k + 1,
                            c.name
                        )));
                    }
                }
                continue;
            }
            cols.push(dm);
            kept.push(k);
        }
        cols.push(vec![1.0; n]);
        let r2 = cols.len();
        let m = DMatrix::from_fn(n, r2, |i, k| cols[k][i]);
        let contrasts = self
            .contrasts
            .iter()
            .map(|c| {
                let s = c.c.ncols();
                let cc = DMatrix::from_fn(r2, s, |i, j| if i < kept.len() { c.c[(kept[i], j)] } else { 0.0 });
                Contrast { name: c.name.clone(), kind: c.kind, c: cc }
            })
            .collect();
        let mut names: Vec<String> = kept.iter().map(|&k| self.column_names[k].clone()).collect();
        names.push("mean (-D)".into());
        Ok(Design { m, contrasts, column_names: names, contrast_labels: self.contrast_labels.clone() })
    }

    /// Every contrast must partition the design: estimable, right size, with degrees of
    /// freedom left. A problem with the design itself is the design's; any other is the
    /// contrasts'.
    pub fn validate(&self) -> std::result::Result<(), DesignError> {
        self.validate_against("the design")
    }

    /// [`Design::validate`], naming the design matrix `mat` (its file) in messages.
    fn validate_against(&self, mat: &str) -> std::result::Result<(), DesignError> {
        let (n, r) = self.m.shape();
        let rk = crate::model::rank(&self.m);
        if n <= rk {
            return Err(DesignError::Design(format!(
                "the design has rank {rk} with {n} rows: no degrees of freedom left"
            )));
        }
        for (k, c) in self.contrasts.iter().enumerate() {
            if rk < r && c.c.nrows() == r {
                let residuals = crate::model::estimability_residuals(&self.m, &c.c);
                if residuals.iter().any(|&e| e > crate::model::ESTIMABLE_TOL) {
                    let label = self.contrast_labels.get(k).map(String::as_str).unwrap_or("");
                    return Err(DesignError::Contrasts(self.not_estimable(c, label, mat)));
                }
            }
            if let Err(msg) = ContrastModel::new(&self.m, c) {
                return Err(if msg.contains("design") {
                    DesignError::Design(msg)
                } else {
                    DesignError::Contrasts(msg)
                });
            }
        }
        Ok(())
    }

    /// The refusal of contrast `c` (labelled `label`), not estimable on design `mat`.
    fn not_estimable(&self, c: &Contrast, label: &str, mat: &str) -> String {
        let weights = |k: usize| {
            let w: Vec<String> = c.c.column(k).iter().map(|x| format!("{x}")).collect();
            format!("[{}]", w.join(" "))
        };
        let what = match c.kind {
            StatKind::T => {
                let number = c.name.trim_start_matches("tstat");
                format!("contrast {number} ({label}, {})", weights(0))
            }
            StatKind::F => format!("F-test {} ({label})", c.name.trim_start_matches("fstat")),
        };
        format!(
            "{what} is not estimable: {mat} {}, and the weights are not a combination of its rows \
             (a redundant column's weight must equal what the combination gives it)",
            self.rank_words()
        )
    }

    /// The design's redundant columns (see [`ColumnDependency`]): each a linear combination
    /// of the columns before it; empty for a full-rank design.
    pub fn column_dependencies(&self) -> Vec<ColumnDependency> {
        crate::model::column_dependencies(&self.m)
    }

    /// "column 3 is a linear combination of columns 1, 2 (rank 2 of 3 columns)": the
    /// redundant columns numbered from 1, as in design.mat ("has rank r of c columns" when
    /// the design is full rank).
    fn rank_words(&self) -> String {
        let deps = self.column_dependencies();
        let r = self.m.ncols();
        let rank = r - deps.len();
        let cols = |v: &[usize]| v.iter().map(|k| (k + 1).to_string()).collect::<Vec<_>>().join(", ");
        let one = |d: &ColumnDependency| match d.of.len() {
            0 => format!("column {} is all zeros", d.column + 1),
            1 => format!("column {} is a multiple of column {}", d.column + 1, d.of[0] + 1),
            _ => format!("column {} is a linear combination of columns {}", d.column + 1, cols(&d.of)),
        };
        let parts: Vec<String> = deps.iter().map(one).collect();
        if parts.is_empty() {
            format!("has rank {rank} of {r} columns")
        } else {
            format!("{} (rank {rank} of {r} columns)", parts.join("; "))
        }
    }

    /// The one-line warning for a rank-deficient design `mat` (None when full rank), e.g.
    /// "design.mat: column 3 is a linear combination of columns 1, 2 (rank 2 of 3 columns);
    /// contrasts are fitted through the pseudo-inverse".
    pub fn rank_warning(&self, mat: &str) -> Option<String> {
        if self.column_dependencies().is_empty() {
            return None;
        }
        Some(format!("{mat}: {}; contrasts are fitted through the pseudo-inverse", self.rank_words()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// design.mat [g1 g2 1] for two groups of two, and design.con with the given rows.
    fn from_vest(con: &[Vec<f64>], fts: Option<&[Vec<f64>]>) -> std::result::Result<Design, DesignError> {
        let rows: Vec<Vec<f64>> = (0..4).map(|i| vec![(i < 2) as u8 as f64, (i >= 2) as u8 as f64, 1.0]).collect();
        let mat = Matrix { label: "design.mat", rows: &rows, ncols: 3, names: &[] };
        let names = vec!["A>B".to_string()];
        let con = Matrix { label: "design.con", rows: con, ncols: 3, names: &names };
        let fts = fts.map(|rows| Matrix { label: "design.fts", rows, ncols: con.rows.len(), names: &[] });
        Design::from_matrices(4, &mat, &con, fts.as_ref())
    }

    /// The warning names the redundant column and the columns it combines, from 1.
    #[test]
    fn rank_warning_names_the_redundant_columns() {
        let d = from_vest(&[vec![1.0, -1.0, 0.0]], None).unwrap();
        assert_eq!(
            d.rank_warning("design.mat").as_deref(),
            Some(
                "design.mat: column 3 is a linear combination of columns 1, 2 (rank 2 of 3 columns); \
                 contrasts are fitted through the pseudo-inverse"
            )
        );
        assert!(Design::one_sample(4).rank_warning("design.mat").is_none());
    }

    /// A non-estimable contrast is the contrasts' error, naming its number, label and
    /// weights and the design's dependency; estimable F-tests pass.
    #[test]
    fn non_estimable_contrast_is_refused_naming_it() {
        let e = from_vest(&[vec![1.0, -1.0, 0.0], vec![0.0, 0.0, 1.0]], None).unwrap_err();
        let DesignError::Contrasts(msg) = e else { panic!("{e:?}") };
        assert!(msg.starts_with("contrast 2 (C2, [0 0 1]) is not estimable: design.mat column 3"), "{msg}");
        let d = from_vest(&[vec![1.0, -1.0, 0.0], vec![0.5, 0.5, 1.0]], Some(&[vec![1.0, 1.0]])).unwrap();
        assert_eq!(d.contrasts.len(), 3);
    }
}
