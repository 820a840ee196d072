//! The progress bar on stderr (hidden with -q or when stderr is not a terminal).
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub fn bar(total: u64, quiet: bool) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(total), if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() });
    pb.set_style(
        ProgressStyle::with_template("{spinner} permutations {pos}/{len} [{bar:30}] {per_sec} eta {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    pb
}
