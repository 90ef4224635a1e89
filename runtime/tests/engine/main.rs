//! The tests that hold both AEAD engines to the spec: envelope behaviour, the envelope fuzzer,
//! Google's Wycheproof vectors and (with `aws-lc`) the two engines against each other. A test
//! binary of its own because `scripts/test` runs it twice: with the default features (AWS-LC)
//! in the workspace run, and again on the portable RustCrypto engine
//! (`cargo test -p leakless --no-default-features --features file-store --lib --test engine`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests: a failed set-up or check must stop the test loudly and say why"
)]

mod aead_engines;
#[path = "../common/mod.rs"]
mod common;
mod envelope;
#[allow(
    clippy::print_stdout,
    reason = "the fuzzer prints what its inputs reached, for a run with --nocapture"
)]
mod fuzz_envelope;
#[allow(
    clippy::print_stderr,
    reason = "each vector file prints its case counts, for a run with --nocapture"
)]
mod wycheproof;
