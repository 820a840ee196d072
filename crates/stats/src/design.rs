//! Designs and contrasts, validated against the data, in the form `glm` takes.
//!
//! Three ways to get one: FSL VEST matrices (design.mat / design.con / design.fts, read by
//! the I/O crate), the one-sample test (`-1` without `-d`), and the group-by-time interaction built from
//! participants' groups.
use crate::model::ContrastModel;
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
        design.validate()?;
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

    /// Every contrast must partition the design: full rank, estimable, right size. A
    /// problem with the design itself is the design's; any other is the contrasts'.
    pub fn validate(&self) -> std::result::Result<(), DesignError> {
        for c in &self.contrasts {
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
}
