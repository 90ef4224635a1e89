//! Compile-time errors of `#[derive(Sealed)]`: each mistake gets one error that says what is
//! wrong and quotes the right syntax (the expected messages are the `.stderr` files in `ui/`).
//! Regenerate them after a deliberate change with `TRYBUILD=overwrite cargo test --test ui`.

#[test]
fn derive_errors_teach_the_right_syntax() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
