//! Compile-time errors of the macros, each with its expected `.stderr`.
//!
//! Regenerate after a deliberate change with `TRYBUILD=overwrite cargo test --test ui`, then
//! review the diff.
#![cfg(feature = "service")]

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
