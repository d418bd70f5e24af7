//! The `shop` binary.
fn main() {}
