//! The leak suites of the harness, one test binary (one module per suite, `support` shared):
//! the scanner and its encodings, containers and archives, the SQLite, PostgreSQL and MariaDB
//! channels over the quickstart's sealed `Patient` model and the clinic example's model, the
//! application channels, residue scans and the `leakless-leakcheck` CLI. Every suite first
//! proves its detector on planted controls, then asserts that no canary leaked. The two tests
//! that measure the process's peak memory have binaries of their own (`streaming`,
//! `residue_scale`).
#![allow(
    missing_docs,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stderr,
    reason = "tests: a failed step stops the test with its message"
)]

mod support;

mod application;
mod cli;
mod clinic_postgres;
mod containers;
mod encodings;
mod mariadb;
mod mariadb_compression;
mod numeric;
mod postgres;
mod residue;
mod sqlite;
mod unescape;
