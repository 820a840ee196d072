//! voxflip's entry point: parse, run, and turn any error into one line and exit code 2.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Err(e) = voxflip::cli::run(args) {
        eprintln!("voxflip: error: {e}");
        std::process::exit(2);
    }
}
