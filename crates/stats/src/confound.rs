//! randomise's confound methods (`-U`), as choices of the engine's problem.
//!
//! Every method regresses some data E, permuted, on some basis, and reads the statistic of
//! the effect of interest (DESIGN.md, "The GLM and Freedman–Lane"). With Z the nuisance,
//! X the effect of interest made orthogonal to Z, and M = [X Z] (randomise's
//! `convertContrast`):
//! - 0, Kennedy: E = R_Z Y regressed on R_Z X alone: the basis is Q's first s columns and
//!   the degrees of freedom N - s (randomise's, which ignores the nuisance's rank);
//! - 1, Freedman–Lane (the default): E = R_Z Y regressed on M;
//! - 2, Manly (no unconfounding): E = Y regressed on M;
//! - 3, ter Braak: E = R_M Y (the full model's residuals) regressed on M.
//!
//! randomise permutes the design's rows instead of the data; for an orthogonal P the
//! statistic of (PM, Y) is that of (M, P'Y), so over a permutation set the two are the
//! same test. Under ter Braak the identity applied to R_M Y gives a statistic of 0
//! everywhere (randomise writes that as its observed map, which its help calls a BETA
//! option); voxflip takes the observed map, and the identity's member of every null, from
//! the unpermuted data, as for every other method ([`crate::observed`]).
use crate::model::ContrastModel;
use crate::problem::ContrastProblem;
use nalgebra::DMatrix;

/// How the nuisance is handled under permutation (randomise -U 0..3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ConfoundMethod {
    /// -U 0: R_Z Y on R_Z X.
    Kennedy,
    /// -U 1: R_Z Y on X | Z (randomise's default).
    #[default]
    FreedmanLane,
    /// -U 2: Y on X | Z (the raw data permuted).
    Manly,
    /// -U 3: R_M Y on X | Z (the full model's residuals permuted).
    TerBraak,
}

impl ConfoundMethod {
    /// randomise's number for the method (`-U K`), or an error naming the range.
    pub fn from_randomise(k: u8) -> Result<ConfoundMethod, String> {
        match k {
            0 => Ok(ConfoundMethod::Kennedy),
            1 => Ok(ConfoundMethod::FreedmanLane),
            2 => Ok(ConfoundMethod::Manly),
            3 => Ok(ConfoundMethod::TerBraak),
            _ => Err(format!(
                "-U {k}: randomise's confound methods are 0 (Kennedy), 1 (Freedman-Lane), 2 (Manly) and 3 (ter Braak)"
            )),
        }
    }

    /// The method's name, for messages.
    pub fn words(self) -> &'static str {
        match self {
            ConfoundMethod::Kennedy => "Kennedy (-U 0: R_Z Y on R_Z X)",
            ConfoundMethod::FreedmanLane => "Freedman-Lane (-U 1: R_Z Y on X|Z)",
            ConfoundMethod::Manly => "Manly (-U 2: Y on X|Z)",
            ConfoundMethod::TerBraak => "ter Braak (-U 3: R_M Y on X|Z)",
        }
    }

    /// The residual degrees of freedom of the method's regression.
    pub fn dof(self, model: &ContrastModel) -> f64 {
        match self {
            ConfoundMethod::Kennedy => (model.n - model.s) as f64,
            _ => model.dof,
        }
    }
}

impl ContrastModel {
    /// The engine's problem for data `y` (N x V, row-major f32) under `method`: E, its
    /// column sums of squares, the basis and the degrees of freedom the method regresses on.
    pub fn problem_for(&self, y: &[f32], v: usize, method: ConfoundMethod) -> ContrastProblem {
        let none = DMatrix::zeros(self.n, 0);
        let removed = match method {
            ConfoundMethod::Kennedy | ConfoundMethod::FreedmanLane => &self.z_basis,
            ConfoundMethod::Manly => &none,
            ConfoundMethod::TerBraak => &self.qbasis,
        };
        let mut p = self.residual_problem(y, v, removed);
        if method == ConfoundMethod::Kennedy {
            // Only the effect's columns: Q's first s, row by row.
            p.qbasis = p.qbasis.chunks_exact(p.q).flat_map(|row| row[..self.s].iter().copied()).collect();
            p.q = self.s;
        }
        p.dof = method.dof(self) as f32;
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::design::Contrast;
    use crate::problem::StatKind;

    /// Each method's E against its definition: R_Z Y, Y, R_M Y by explicit projections,
    /// and Kennedy's basis the effect's column alone with N - 1 degrees of freedom.
    #[test]
    fn each_method_residualises_what_it_defines() {
        let (n, v) = (7usize, 3usize);
        let m = DMatrix::from_fn(n, 3, |i, k| match k {
            0 => 1.0,
            1 => (i % 2) as f64,
            _ => (i as f64 * 0.7).sin(),
        });
        let c =
            Contrast { name: "tstat1".into(), kind: StatKind::T, c: DMatrix::from_column_slice(3, 1, &[0., 1., 0.]) };
        let model = ContrastModel::new(&m, &c).unwrap();
        let y: Vec<f32> = (0..n * v).map(|k| ((k * 37 % 11) as f32 - 5.0) * 0.3).collect();
        let ym = DMatrix::from_fn(n, v, |i, x| y[i * v + x] as f64);
        let z = DMatrix::from_columns(&[m.column(0), m.column(2)]);
        let resid = |a: &DMatrix<f64>| -> DMatrix<f64> {
            let fit = a * (a.clone().pseudo_inverse(1e-12).unwrap() * &ym);
            &ym - fit
        };
        let expect = [
            (ConfoundMethod::Kennedy, resid(&z)),
            (ConfoundMethod::FreedmanLane, resid(&z)),
            (ConfoundMethod::Manly, ym.clone()),
            (ConfoundMethod::TerBraak, resid(&m)),
        ];
        for (method, e) in expect {
            let p = model.problem_for(&y, v, method);
            for i in 0..n {
                for x in 0..v {
                    // f32 storage of values of order 1: 1e-5 absolute.
                    assert!((p.e[i * v + x] as f64 - e[(i, x)]).abs() < 1e-5, "{method:?} E[{i},{x}]");
                }
            }
            for x in 0..v {
                let ss: f64 = (0..n).map(|i| e[(i, x)].powi(2)).sum();
                assert!((p.ss[x] as f64 - ss).abs() < 1e-5 * ss.max(1.0), "{method:?} ss[{x}]");
            }
            let (q, dof) = if method == ConfoundMethod::Kennedy { (1, n - 1) } else { (3, n - 3) };
            assert_eq!((p.q, p.dof, p.qbasis.len()), (q, dof as f32, n * q), "{method:?}");
            for i in 0..n {
                assert_eq!(p.qbasis[i * q], model.qbasis[(i, 0)] as f32, "{method:?} Q[{i},0]");
            }
        }
        assert_eq!(ConfoundMethod::from_randomise(1), Ok(ConfoundMethod::FreedmanLane));
        assert!(ConfoundMethod::from_randomise(4).unwrap_err().contains("-U 4"));
    }
}
