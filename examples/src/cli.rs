//! The error exit of the example programs: a [`Failure`] of the demo itself carries the hint
//! to print under it, and [`exit`] prints `error: …` and `hint: …` to stderr for any error.

use std::error::Error;
use std::fmt;
use std::io::Write as _;
use std::process::ExitCode;

/// A failure of a demo itself, with a hint on what to do. Its message names what failed,
/// never a plaintext or a key.
#[derive(Debug)]
pub struct Failure {
    message: String,
    hint: &'static str,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for Failure {}

/// A boxed [`Failure`] with `message` and `hint`.
#[must_use]
pub fn fail(message: impl Into<String>, hint: &'static str) -> Box<dyn Error> {
    Box::new(Failure {
        message: message.into(),
        hint,
    })
}

/// The exit code of a program whose `run` returned `result`. On an error, prints `error:` with
/// it and `hint:` with the [`Failure`]'s hint, or else with what `hint_for` says about the
/// error, to stderr.
pub fn exit(
    result: Result<(), Box<dyn Error>>,
    hint_for: impl FnOnce(&(dyn Error + 'static)) -> &'static str,
) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let hint = match e.downcast_ref::<Failure>() {
                Some(f) => f.hint,
                None => hint_for(&*e),
            };
            // If even stderr is gone there is nobody left to tell; the exit code still says it.
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "error: {e}");
            let _ = writeln!(err, "hint: {hint}");
            ExitCode::FAILURE
        }
    }
}
