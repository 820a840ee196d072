//! The library crates report through the `log` crate; this logger prints their records on
//! stderr as "voxflip: {message}", the way the binary's own messages read. With `--quiet` only
//! warnings (a GPU that failed mid-run, a fallback) get through.
use log::{LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            eprintln!("voxflip: {}", record.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

/// Install the logger (once; later calls only change the level).
pub fn init(quiet: bool) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(if quiet { LevelFilter::Warn } else { LevelFilter::Info });
}
