//! Fault points for tchu's own crash tests (the `fault-injection` feature): the process exits
//! at the point named by `TCHU_FAULT`, the way a kill there would leave things, or, with
//! `TCHU_FAULT=hold:<point>`, stops there for good so that a test can kill it from outside
//! (SIGKILL) with the work in progress. Without the feature they compile to nothing.
#![cfg_attr(not(feature = "postgres"), allow(dead_code))]

/// Exits with status 86 when `TCHU_FAULT` names this point; blocks this thread for good when
/// it says `hold:` and this point.
#[cfg(feature = "fault-injection")]
pub(crate) fn point(name: &str) {
    let Ok(fault) = std::env::var("TCHU_FAULT") else {
        return;
    };
    if fault == name {
        eprintln!("TCHU_FAULT: exiting at {name}");
        std::process::exit(86);
    }
    if fault.strip_prefix("hold:") == Some(name) {
        eprintln!("TCHU_FAULT: holding at {name}");
        loop {
            std::thread::park();
        }
    }
}

#[cfg(not(feature = "fault-injection"))]
pub(crate) fn point(_: &str) {}
