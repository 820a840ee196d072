//! Image file names as FSL tools take them: without their extension on the way in
//! ([`resolve_image`]), and with the extension `FSLOUTPUTTYPE` asks for on the way out
//! ([`OutputType`]).
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The extensions tried, in order, after the name as given (FSL's NIfTI types; the
/// .hdr/.img pairs of ANALYZE and NIFTI_PAIR are not read by voxflip).
const IMAGE_EXTENSIONS: [&str; 2] = [".nii.gz", ".nii"];

/// Whether a file name already ends in an image extension.
fn has_image_extension(name: &str) -> bool {
    IMAGE_EXTENSIONS.iter().any(|e| name.ends_with(e))
}

/// The file an image name means, as FSL tools resolve it: the name as given when that file
/// exists; otherwise, for a name without an image extension, `name.nii.gz` or `name.nii`.
///
/// When both of those exist the name is ambiguous and refused, as FSL's own reader refuses
/// it ("multiple possible filenames"): either could be stale, and reading the wrong one would
/// silently analyse other data. An unresolvable name gets one line listing what was tried.
pub fn resolve_image(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name.is_empty() || has_image_extension(&name) {
        return Err(Error::input(path, "no such file"));
    }
    let candidates: Vec<PathBuf> = IMAGE_EXTENSIONS.iter().map(|e| path.with_file_name(format!("{name}{e}"))).collect();
    let found: Vec<&PathBuf> = candidates.iter().filter(|p| p.is_file()).collect();
    match found[..] {
        [one] => Ok(one.clone()),
        [] => {
            let tried: Vec<String> = std::iter::once(path)
                .chain(candidates.iter().map(PathBuf::as_path))
                .map(|p| p.display().to_string())
                .collect();
            Err(Error::input(path, format!("no such image (tried {})", tried.join(", "))))
        }
        _ => Err(Error::input(
            path,
            format!(
                "ambiguous image name: both {} and {} exist; give the full file name",
                candidates[0].display(),
                candidates[1].display()
            ),
        )),
    }
}

/// The format of the images a run writes, from FSL's `FSLOUTPUTTYPE`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputType {
    /// `.nii.gz` (FSL's default, NIFTI_GZ).
    #[default]
    NiftiGz,
    /// `.nii` (NIFTI).
    Nifti,
}

impl OutputType {
    /// The type `FSLOUTPUTTYPE` names (`None`: unset, the default `.nii.gz`). The types
    /// voxflip cannot write are refused in one line: NIFTI2 and NIFTI2_GZ (its writer writes
    /// NIfTI-1, which every reader takes, and a map never needs NIfTI-2's 64-bit sizes) and
    /// the header/image pairs (ANALYZE, NIFTI_PAIR and their _GZ forms).
    pub fn from_fsl(value: Option<&str>) -> std::result::Result<OutputType, String> {
        let refuse = |why: &str| Err(format!("FSLOUTPUTTYPE={}: {why}", value.unwrap_or("")));
        match value.map(str::trim) {
            None | Some("") | Some("NIFTI_GZ") => Ok(OutputType::NiftiGz),
            Some("NIFTI") => Ok(OutputType::Nifti),
            Some("NIFTI2" | "NIFTI2_GZ") => {
                refuse("voxflip writes NIfTI-1 only; set FSLOUTPUTTYPE to NIFTI_GZ or NIFTI")
            }
            Some("ANALYZE" | "ANALYZE_GZ" | "NIFTI_PAIR" | "NIFTI_PAIR_GZ" | "NIFTI2_PAIR" | "NIFTI2_PAIR_GZ") => {
                refuse("header/image pairs are not written by voxflip; set FSLOUTPUTTYPE to NIFTI_GZ or NIFTI")
            }
            Some(_) => refuse("unknown output type; FSL's are NIFTI_GZ, NIFTI, NIFTI2_GZ, NIFTI2, NIFTI_PAIR, ANALYZE"),
        }
    }

    /// The file extension of this type.
    pub fn extension(self) -> &'static str {
        match self {
            OutputType::NiftiGz => ".nii.gz",
            OutputType::Nifti => ".nii",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_as_fsl_resolves_them() {
        let d = voxflip_testkit::tempdir().unwrap();
        let p = |n: &str| d.path().join(n);
        std::fs::write(p("a.nii.gz"), "").unwrap();
        std::fs::write(p("b.nii"), "").unwrap();
        std::fs::write(p("c.nii.gz"), "").unwrap();
        std::fs::write(p("c.nii"), "").unwrap();
        std::fs::write(p("plain"), "").unwrap();
        assert_eq!(resolve_image(&p("a")).unwrap(), p("a.nii.gz"));
        assert_eq!(resolve_image(&p("a.nii.gz")).unwrap(), p("a.nii.gz"));
        assert_eq!(resolve_image(&p("b")).unwrap(), p("b.nii"));
        // The name as given wins when it exists, with or without an extension.
        assert_eq!(resolve_image(&p("c.nii")).unwrap(), p("c.nii"));
        assert_eq!(resolve_image(&p("plain")).unwrap(), p("plain"));
        let e = resolve_image(&p("c")).unwrap_err().to_string();
        assert!(e.contains("ambiguous") && e.contains("c.nii.gz") && e.contains("c.nii ") && !e.contains('\n'), "{e}");
        let e = resolve_image(&p("nope")).unwrap_err().to_string();
        let tried = format!("tried {0}, {0}.nii.gz, {0}.nii)", p("nope").display());
        assert!(e.contains("no such image") && e.ends_with(&tried), "{e}");
        // A name with an extension is not extended again.
        let e = resolve_image(&p("nope.nii")).unwrap_err().to_string();
        assert!(e.ends_with("nope.nii: no such file"), "{e}");
        // A directory is not an image, and `a` the directory does not hide a.nii.gz.
        std::fs::create_dir(p("dir.nii.gz")).unwrap();
        assert!(resolve_image(&p("dir")).is_err());
    }

    #[test]
    fn fsloutputtype_picks_the_extension_or_refuses_in_one_line() {
        assert_eq!(OutputType::from_fsl(None).unwrap().extension(), ".nii.gz");
        assert_eq!(OutputType::from_fsl(Some("NIFTI_GZ")).unwrap().extension(), ".nii.gz");
        assert_eq!(OutputType::from_fsl(Some("NIFTI")).unwrap().extension(), ".nii");
        for bad in ["NIFTI2", "NIFTI2_GZ", "ANALYZE", "ANALYZE_GZ", "NIFTI_PAIR", "nifti", "XYZ"] {
            let e = OutputType::from_fsl(Some(bad)).unwrap_err();
            assert!(e.starts_with(&format!("FSLOUTPUTTYPE={bad}: ")) && !e.contains('\n'), "{e}");
        }
    }
}
