//! The `tchu` command-line tool (being written).
fn main() {}
