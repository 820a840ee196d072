//! The CPU engine: register-blocked product and vectorized epilogue, multithreaded.
