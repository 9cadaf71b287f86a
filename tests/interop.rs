//! Interoperability with Python tchu-tchu 3.0.4 services on one broker: the checklist of
//! `docs/wire.md` section 5, one named test per item (`interop/suite.rs`, shared with
//! `interop_2x.rs`, which runs it against tchu-tchu 2.4.0). Item 25 (persistence across a
//! broker restart) lives in `interop_restart.rs`, since restarting the broker disturbs every
//! other test. Items 22 and 23 (Celery retries, duplicate delivery) are documented differences
//! in `docs/mixed-fleet.md`: both sides run a duplicated message twice.
#![cfg(feature = "service")]

mod common;
mod python;

/// The Python release of this binary.
const PY: &python::Release = &python::V3;

mod foreign {
    use super::*;

    /// Bound to the Python service's queue name: tchu-tchu 3.x publishes its handler tasks with
    /// that routing key on `tchu_events` (B13).
    #[tchu::subscribe("tchu_interop_py")]
    async fn sees_python_tasks(m: Message, r: State<Rec>) {
        r.push("rs.foreign", &m);
    }
}

include!("interop/suite.rs");
