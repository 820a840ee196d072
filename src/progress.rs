//! The progress bar on stderr (hidden with -q or when stderr is not a terminal), as the
//! scheduler's [`Progress`] report.
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use voxflip_engines::Progress;

pub struct Bar(ProgressBar);

impl Bar {
    pub fn new(total: u64, quiet: bool) -> Bar {
        let target = if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
        let pb = ProgressBar::with_draw_target(Some(total), target);
        let style = ProgressStyle::with_template("{spinner} permutations {pos}/{len} [{bar:30}] {per_sec} eta {eta}")
            .expect("a valid template")
            .progress_chars("=> ");
        pb.set_style(style);
        Bar(pb)
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl Progress for Bar {
    fn advance(&self, permutations: u64) {
        self.0.inc(permutations);
    }
}
