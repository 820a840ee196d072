//! voxflip's entry point: parse, run, and turn any error into one line and exit code 2.
fn main() {
    // Without XDG_RUNTIME_DIR, the GL and Vulkan window-system probes that wgpu's adapter
    // enumeration triggers print "error: XDG_RUNTIME_DIR is invalid" lines on stderr (on a
    // headless machine they are harmless). Point it at the temporary directory before any
    // thread starts.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    let args: Vec<String> = std::env::args().collect();
    if let Err(e) = voxflip::cli::run(args) {
        eprintln!("voxflip: error: {e}");
        std::process::exit(2);
    }
}
