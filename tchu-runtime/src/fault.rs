//! Fault points for tchu's own crash tests (the `fault-injection` feature): the process exits
//! at the point named by `TCHU_FAULT`, the way a kill there would leave things. Without the
//! feature they compile to nothing.
#![cfg_attr(not(feature = "postgres"), allow(dead_code))]

/// Exits with status 86 when `TCHU_FAULT` names this point.
#[cfg(feature = "fault-injection")]
pub(crate) fn point(name: &str) {
    if std::env::var("TCHU_FAULT").is_ok_and(|f| f == name) {
        eprintln!("TCHU_FAULT: exiting at {name}");
        std::process::exit(86);
    }
}

#[cfg(not(feature = "fault-injection"))]
pub(crate) fn point(_: &str) {}
