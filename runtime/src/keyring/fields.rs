//! The [`KeyRing`]'s field-level methods: typed values through the plaintext codec, and
//! blind-index tokens from index keys the ring caches.

use crate::blind_index::{BlindIndex, BlindIndexSpec, derive_field_key, token};
use crate::codec::Sealable;
use crate::context::FieldContext;
use crate::error::Error;
use crate::key::{KekState, KeyScope};
use crate::keyring::{FieldPolicy, KeyRing};

impl KeyRing {
    /// Encodes `value` ([`Sealable`]) and seals it for the field at `ctx`.
    ///
    /// # Errors
    /// As [`Sealable::to_plaintext`] and [`KeyRing::seal`].
    pub fn seal_value<T: Sealable>(
        &self,
        scope: &KeyScope,
        ctx: &FieldContext<'_>,
        value: &T,
        policy: &FieldPolicy,
    ) -> Result<Vec<u8>, Error> {
        let plaintext = value.to_plaintext().map_err(|e| at_field(ctx, e))?;
        self.seal(scope, ctx, &plaintext, policy)
    }

    /// Opens an envelope that must be sealed under `scope` (the scope the field's row uses)
    /// and decodes the value ([`Sealable`]).
    ///
    /// # Errors
    /// As [`KeyRing::open_in_scope`] (so [`Error::WrongKeyScope`] for a value sealed under
    /// another scope) and [`Sealable::from_plaintext`].
    pub fn open_value<T: Sealable>(
        &self,
        scope: &KeyScope,
        ctx: &FieldContext<'_>,
        envelope: &[u8],
    ) -> Result<T, Error> {
        T::from_plaintext(self.open_in_scope(scope, ctx, envelope)?).map_err(|e| at_field(ctx, e))
    }
}

/// An encoding error of a value (a NaN inside JSON, bytes that are not the field's type), with
/// the field's table, column and row put in front of the problem.
fn at_field(ctx: &FieldContext<'_>, e: Error) -> Error {
    match e {
        Error::InvalidInput { what, problem } => Error::InvalidInput {
            what,
            problem: format!("{}: {problem}", ctx.location()),
        },
        other => other,
    }
}

impl KeyRing {
    /// The blind-index token to store for `plaintext`, under the active version of the index
    /// scope.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad spec or non-text input to a text normaliser; the key
    /// errors of [`KeyRing::seal`] for the index scope.
    pub fn blind_index(
        &self,
        spec: &BlindIndexSpec,
        plaintext: &[u8],
    ) -> Result<BlindIndex, Error> {
        spec.check()?;
        let normalised = spec.normalizer.apply(plaintext)?;
        let info = spec.info()?;
        let (version, key) =
            self.active_derived_key(&spec.scope, &info, |k| derive_field_key(k, &info))?;
        token(&key, version, spec, &normalised)
    }

    /// The tokens to look `plaintext` up by: one per version of the index scope that can still
    /// open (the active one first, then versions in grace). Match a row if its stored token
    /// equals any of them.
    ///
    /// # Errors
    /// As [`Self::blind_index`].
    pub fn blind_index_candidates(
        &self,
        spec: &BlindIndexSpec,
        plaintext: &[u8],
    ) -> Result<Vec<BlindIndex>, Error> {
        spec.check()?;
        let normalised = spec.normalizer.apply(plaintext)?;
        let info = spec.info()?;
        let (active, key) =
            self.active_derived_key(&spec.scope, &info, |k| derive_field_key(k, &info))?;
        let mut out = vec![token(&key, active, spec, &normalised)?];
        let now = self.clock_now();
        for record in self.versions(&spec.scope)? {
            if record.version != active
                && matches!(record.state, KekState::Grace { .. })
                && record.state.opens_at(now)
            {
                let key = self.derived_key(&spec.scope, record.version, &info, |k| {
                    derive_field_key(k, &info)
                })?;
                out.push(token(&key, record.version, spec, &normalised)?);
            }
        }
        Ok(out)
    }
}
