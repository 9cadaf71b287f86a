//! Interoperability with Python tchu-tchu 2.4.0 services (the release whose README tchu
//! ports): the suite of `interop.rs` (`interop/suite.rs`), every item against 2.4.0, with the
//! Rust side writing the 2.x form (`TchuTchu::V2`) as a user with such a fleet sets it. Where
//! 2.4.0 behaves differently from 3.0.4, the test asserts what 2.4.0 does.
#![cfg(feature = "service")]

mod common;
mod python;

/// The Python release of this binary.
const PY: &python::Release = &python::V2;

mod foreign {
    use super::*;

    /// Bound to the Python service's queue name, where tchu-tchu 3.x would publish its handler
    /// tasks (B13); 2.4.0 runs its handlers inside the dispatcher and publishes none.
    #[tchu::subscribe("tchu_interop_py2")]
    async fn sees_python_tasks(m: Message, r: State<Rec>) {
        r.push("rs.foreign", &m);
    }
}

include!("interop/suite.rs");
