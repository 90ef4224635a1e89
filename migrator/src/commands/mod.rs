//! One module per subcommand. Registering a new one: a variant in [`crate::cli::Command`] and
//! its arm in [`run`] (for `keys ...`: [`keys::KeysCommand`] and [`keys::run`]).

pub mod adopt;
pub mod copy;
pub mod jobs;
pub mod keys;
pub mod purge_residue;
pub mod reencrypt;
pub mod reindex;
pub mod rewrap;
pub mod rotate_root;
pub mod shamir;
pub mod status;
pub mod verify;

use crate::cli::Command;
use crate::env::Env;
use crate::error::Result;

/// Runs a parsed subcommand.
///
/// # Errors
/// The subcommand's [`crate::error::Failure`].
pub fn run(env: &mut Env, cmd: &Command) -> Result<()> {
    match cmd {
        Command::Keys(c) => keys::run(env, c),
        Command::Status(a) => status::run(env, a),
        Command::Rewrap(a) => rewrap::run(env, a),
        Command::Verify(a) => verify::run(env, a),
        Command::Adopt(a) => adopt::run(env, a),
        Command::Copy(a) => copy::run(env, a),
        Command::Reencrypt(a) => reencrypt::run(env, a),
        Command::Reindex(a) => reindex::run(env, a),
        Command::PurgeResidue(a) => purge_residue::run(env, a),
    }
}
