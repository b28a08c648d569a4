//! Fault points for crash tests. `LARCH_FAULT=<point>` in the environment makes
//! the process die at that point, as a crash or power cut would; with it unset
//! (as in any normal run) a point costs one comparison.
//!
//! Points: `after-put` (the object is in the target, the spool does not know yet).

use std::sync::OnceLock;

pub fn point(name: &str) {
    static FAULT: OnceLock<Option<String>> = OnceLock::new();
    let armed = FAULT.get_or_init(|| std::env::var("LARCH_FAULT").ok());
    if armed.as_deref() == Some(name) {
        eprintln!("larch: fault point {name} reached (LARCH_FAULT): dying now");
        std::process::abort();
    }
}
