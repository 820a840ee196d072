//! The progress bar on stderr, as the scheduler's [`Progress`] report: redrawn in place at
//! most ten times a second, and not at all with --quiet or when stderr is not a terminal.
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use voxflip_engines::Progress;

pub struct Bar {
    total: u64,
    done: AtomicU64,
    shown: bool,
    start: Instant,
    /// When the bar was last drawn.
    drawn: Mutex<Option<Instant>>,
}

const WIDTH: usize = 30;

impl Bar {
    pub fn new(total: u64, quiet: bool) -> Bar {
        let shown = !quiet && std::io::stderr().is_terminal();
        Bar { total, done: AtomicU64::new(0), shown, start: Instant::now(), drawn: Mutex::new(None) }
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        if self.shown && self.drawn.lock().is_ok_and(|d| d.is_some()) {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r{:width$}\r", "", width = WIDTH + 60);
            let _ = err.flush();
        }
    }

    fn draw(&self, done: u64) {
        let mut drawn = match self.drawn.lock() {
            Ok(d) => d,
            Err(_) => return,
        };
        let now = Instant::now();
        if drawn.is_some_and(|t| now - t < Duration::from_millis(100)) && done < self.total {
            return;
        }
        *drawn = Some(now);
        let elapsed = (now - self.start).as_secs_f64().max(1e-9);
        let rate = done as f64 / elapsed;
        let filled = (WIDTH as u64 * done / self.total.max(1)) as usize;
        let bar: String = (0..WIDTH)
            .map(|i| {
                if i < filled {
                    '='
                } else if i == filled {
                    '>'
                } else {
                    ' '
                }
            })
            .collect();
        let eta = if rate > 0.0 { (self.total.saturating_sub(done)) as f64 / rate } else { 0.0 };
        let mut err = std::io::stderr();
        let _ = write!(err, "\rpermutations {done}/{} [{bar}] {rate:.0}/s eta {eta:.0}s ", self.total);
        let _ = err.flush();
    }
}

impl Progress for Bar {
    fn advance(&self, permutations: u64) {
        let done = self.done.fetch_add(permutations, Ordering::Relaxed) + permutations;
        if self.shown {
            self.draw(done);
        }
    }
}
