//! SIGINT and SIGTERM: this run's temporary files removed, then exit with the shell's
//! conventional status (130, 143); a commit of outputs under way finishes first.
//!
//! The two signals are blocked in every thread (set before any thread starts, inherited by
//! all) and taken by one thread with `sigwait`, so the handling runs as ordinary code, not in
//! a signal handler: it may take the lock that commits hold ([`voxflip_io::temps::abandon`]),
//! which is how the renames of a commit defer an interrupt. Child processes start with the
//! default mask (the standard library resets it when it spawns them).

/// Block SIGINT and SIGTERM and start the thread that handles them. Call first in main.
pub fn install() {
    #[cfg(unix)]
    {
        // SAFETY: sigset_t is plain data that sigemptyset initialises; the calls only read
        // and write the set and this thread's mask.
        let set = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return;
            }
            set
        };
        let waiter = move || loop {
            let mut sig = 0;
            // SAFETY: waits for one of the blocked signals in `set`, writing its number.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                interrupted(sig);
            }
        };
        if std::thread::Builder::new().name("signals".into()).spawn(waiter).is_err() {
            // Without the thread, the signals keep their default action.
            // SAFETY: as above, on this thread's mask.
            unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
        }
    }
}

/// Remove this run's temporaries (after a commit under way) and exit.
#[cfg(unix)]
fn interrupted(sig: i32) -> ! {
    let removed = voxflip_io::temps::abandon();
    let (name, status) = if sig == libc::SIGTERM { ("SIGTERM", 143) } else { ("SIGINT", 130) };
    eprintln!("\nvoxflip: interrupted ({name}); removed this run's {removed} temporary file(s)");
    std::process::exit(status)
}
