//! Seal/open benchmarks (being written).
fn main() {}
