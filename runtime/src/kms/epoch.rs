//! Root epochs: the backend half of a complete crypto-shred.
//!
//! Destroying a KEK version erases its wrapped material from the key store, but the key store
//! lives in the database and in every backup of it. Someone holding a backup taken before the
//! destroy and a credential that still works today could unwrap the "destroyed" KEK. A shred is
//! only complete when the root-of-trust material that could unwrap it is gone from the backend
//! too. A **root epoch** is one generation of that material (a local key file's key, an AWS
//! KMS key, a Vault Transit key version, ...). Completing a shred is:
//!
//! 1. [`RootEpochs::begin_next_epoch`]: make fresh root material in the backend;
//! 2. move every surviving KEK record onto it: hand [`EpochChange::mover`] to
//!    [`KeyRing::rewrap_root_in_kms`](crate::KeyRing::rewrap_root_in_kms);
//! 3. check that no record with material is left on the retiring epoch
//!    ([`EpochChange::still_on_retiring`] is `false` for every stored
//!    [`WrappedKek`]);
//! 4. [`RootEpochs::destroy_epoch`] with [`EpochChange::retiring`]: the old material is
//!    destroyed *in the backend*, so every older copy of the key store becomes useless.
//!
//! `docs/shredding.md` gives the sequence per backend and what a completed shred guarantees.
//!
//! # Who calls what
//!
//! * The key ring's shred orchestration (and the migrator through it) calls all three methods,
//!   in the order above, on a backend built from the same configuration as the applications'
//!   one. Steps 1 to 4 can be repeated after an interruption: `begin_next_epoch` resumes a
//!   staged epoch where the backend can tell (local key file), and `destroy_epoch` of an epoch
//!   that is already gone says so ([`Destruction::AlreadyGone`]).
//! * Applications never call these. Their [`Kms`](crate::kms::Kms), built from the same
//!   configuration, keeps working across the change without a restart where the backend
//!   allows it (see each backend's docs and `docs/shredding.md`).
//! * The backend never reads or writes the key store (invariant 9): checking that nothing is
//!   left on the retiring epoch before step 4 is the caller's duty.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::Error;
use crate::key::{UnixTime, WrappedKek};
use crate::kms::{InKmsRewrap, KekBinding, Kms};
use crate::secret::Kek;

/// One generation of root material in a backend.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RootEpoch {
    /// The root key id, as [`Kms::root_key_id`](crate::kms::Kms::root_key_id) reports it and
    /// as [`WrappedKek::root_key_id`] stores it.
    pub root_key_id: String,
    /// For a backend whose root key has versions under one id (Vault Transit): the newest key
    /// version of this epoch. Destroying the epoch destroys that version and every older one.
    /// `None` for backends where every epoch has its own root key id.
    pub key_version: Option<u32>,
}

impl RootEpoch {
    /// An epoch that is a root key of its own.
    #[must_use]
    pub fn of_key(root_key_id: impl Into<String>) -> Self {
        Self {
            root_key_id: root_key_id.into(),
            key_version: None,
        }
    }
}

impl fmt::Display for RootEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.key_version {
            Some(v) => write!(f, "{} (versions up to v{v})", self.root_key_id),
            None => f.write_str(&self.root_key_id),
        }
    }
}

/// A started move to a new root epoch, made by [`RootEpochs::begin_next_epoch`].
///
/// Holds the epoch to destroy afterwards, the new one, and the re-wrap that moves stored KEK
/// records onto the new one. It borrows the backend; drop it when the shred is done.
pub struct EpochChange<'a> {
    retiring: RootEpoch,
    next: RootEpoch,
    mover: Box<dyn InKmsRewrap + 'a>,
}

impl fmt::Debug for EpochChange<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EpochChange")
            .field("retiring", &self.retiring)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl<'a> EpochChange<'a> {
    /// Assembles a change (for backends, including ones outside this crate).
    #[must_use]
    pub fn new(retiring: RootEpoch, next: RootEpoch, mover: Box<dyn InKmsRewrap + 'a>) -> Self {
        Self {
            retiring,
            next,
            mover,
        }
    }

    /// The epoch whose material [`RootEpochs::destroy_epoch`] destroys once every record has
    /// moved.
    #[must_use]
    pub fn retiring(&self) -> &RootEpoch {
        &self.retiring
    }

    /// The new epoch: where records are moved, and what new wraps use from now on.
    #[must_use]
    pub fn next(&self) -> &RootEpoch {
        &self.next
    }

    /// The re-wrap of every record not yet on the new epoch, for
    /// [`KeyRing::rewrap_root_in_kms`](crate::KeyRing::rewrap_root_in_kms). For Vault and AWS
    /// it runs inside the KMS; for the local, PKCS#11 and TPM backends the KEK is unwrapped
    /// under the old material and wrapped under the new one in this process (or on the token).
    #[must_use]
    pub fn mover(&self) -> &dyn InKmsRewrap {
        &*self.mover
    }

    /// Whether `wrapped` is not yet on the new epoch. Every stored record that still has
    /// material must answer `false` before [`RootEpochs::destroy_epoch`] is called: a record
    /// left behind would become unreadable for good.
    #[must_use]
    pub fn still_on_retiring(&self, wrapped: &WrappedKek) -> bool {
        self.mover.needs_rewrap(wrapped)
    }
}

/// What became of an epoch's material.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destruction {
    /// Destroyed by this call: the backend no longer holds it.
    Destroyed,
    /// It was already gone (a repeated, previously interrupted shred).
    AlreadyGone,
    /// The backend refuses every use of it now, but deletes it only at `at` (AWS KMS
    /// `ScheduleKeyDeletion`, 7 to 30 days). Until then an administrator of the backend can
    /// still cancel the deletion; the shred is *pending*, not complete.
    Scheduled {
        /// When the backend deletes the material.
        at: UnixTime,
    },
}

impl Destruction {
    /// Whether the material is gone now (not merely scheduled).
    #[must_use]
    pub fn is_complete(&self) -> bool {
        matches!(self, Destruction::Destroyed | Destruction::AlreadyGone)
    }
}

/// The outcome of [`RootEpochs::destroy_epoch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochDestroyed {
    /// The epoch.
    pub epoch: RootEpoch,
    /// Gone now, already gone, or scheduled (with the date).
    pub status: Destruction,
    /// Where copies of the material may still exist outside the backend's reach, for the
    /// operator to check (a human sentence, no secrets), e.g. filesystem snapshots of a local
    /// key file or Vault storage snapshots.
    pub copies_may_remain: String,
}

/// A backend that can make fresh root material and destroy old root material: the backend
/// half of a complete crypto-shred. Object-safe. See the [module docs](self) for the
/// sequence.
pub trait RootEpochs: Send + Sync {
    /// The epoch that new wraps use now.
    ///
    /// # Errors
    /// [`Error::Kms`], [`Error::KmsUnavailable`] or [`Error::KeyFile`] when the backend
    /// cannot be read.
    fn current_epoch(&self) -> Result<RootEpoch, Error>;

    /// Makes fresh root material (the next epoch) in the backend, makes it the one that new
    /// wraps use, and returns what moves stored records onto it.
    ///
    /// Nothing is destroyed: until [`Self::destroy_epoch`], the old material still unwraps
    /// records that have not moved yet, so an interrupted shred loses nothing. Applications
    /// built from the same configuration keep opening records on either epoch.
    ///
    /// # Errors
    /// [`Error::Kms`], [`Error::KmsUnavailable`] or [`Error::KeyFile`] when the material
    /// cannot be made; [`Error::InvalidInput`] when this backend's configuration cannot have
    /// epochs (e.g. a local root key from an environment variable, an AWS key named by key
    /// id instead of an alias).
    fn begin_next_epoch(&self) -> Result<EpochChange<'_>, Error>;

    /// Destroys the material of `epoch` in the backend (or schedules its deletion where the
    /// backend only schedules). Call only after every stored record has moved off it
    /// ([`EpochChange::still_on_retiring`]).
    ///
    /// Refuses to destroy the epoch new wraps use. Safe to repeat: an epoch already gone is
    /// [`Destruction::AlreadyGone`] (or `Scheduled` again, with the same date).
    ///
    /// # Errors
    /// [`Error::Kms`], [`Error::KmsUnavailable`] or [`Error::KeyFile`] when the backend
    /// refuses or cannot be reached; [`Error::InvalidInput`] for the current epoch or one
    /// that is not this backend's.
    fn destroy_epoch(&self, epoch: &RootEpoch) -> Result<EpochDestroyed, Error>;
}

/// A backend whose epochs are root keys of their own, and which moves a record between them by
/// unwrapping its KEK ([`Kms::unwrap_kek`]) and wrapping it again under the next epoch's key.
pub(crate) trait WrapUnderEpoch: Kms {
    /// Wraps `kek` under the root key `id` (an epoch this backend holds), bound to `binding`.
    fn wrap_under_epoch(
        &self,
        id: &str,
        kek: &Kek,
        binding: &KekBinding<'_>,
    ) -> Result<WrappedKek, Error>;
}

impl<'a> EpochChange<'a> {
    /// The change from the root key `retiring` to the root key `next` of `kms`, whose mover
    /// unwraps each record under whichever epoch it is on and wraps it under `next`. The KEK
    /// is in this process's memory in between (as on every unwrap), zeroized on drop.
    pub(crate) fn rewrap_onto<K: WrapUnderEpoch>(
        kms: &'a K,
        retiring: String,
        next: String,
    ) -> Self {
        Self::new(
            RootEpoch::of_key(retiring),
            RootEpoch::of_key(next.clone()),
            Box::new(RewrapOnto { kms, to: next }),
        )
    }
}

/// The mover of [`EpochChange::rewrap_onto`].
struct RewrapOnto<'a, K> {
    kms: &'a K,
    to: String,
}

impl<K: WrapUnderEpoch> InKmsRewrap for RewrapOnto<'_, K> {
    fn needs_rewrap(&self, wrapped: &WrappedKek) -> bool {
        wrapped.root_key_id != self.to
    }

    fn rewrap(&self, wrapped: &WrappedKek, binding: &KekBinding<'_>) -> Result<WrappedKek, Error> {
        let kek = self.kms.unwrap_kek(wrapped, binding)?;
        self.kms.wrap_under_epoch(&self.to, &kek, binding)
    }
}

/// An append-only list of root keys a backend knows, with the one new wraps use. Entries are
/// never removed (their secret part can be emptied), so `&str` ids borrowed from it live as
/// long as the backend: that keeps [`Kms::root_key_id`](crate::kms::Kms::root_key_id)
/// returning `&str` while the current key changes underneath.
pub(crate) struct KeyChain<T> {
    head: ChainNode<T>,
    current: AtomicUsize,
}

pub(crate) struct ChainNode<T> {
    pub(crate) id: String,
    pub(crate) data: T,
    next: OnceLock<Box<ChainNode<T>>>,
}

impl<T> KeyChain<T> {
    pub(crate) fn new(id: String, data: T) -> Self {
        Self {
            head: ChainNode {
                id,
                data,
                next: OnceLock::new(),
            },
            current: AtomicUsize::new(0),
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &ChainNode<T>> {
        std::iter::successors(Some(&self.head), |n| n.next.get().map(|b| &**b))
    }

    pub(crate) fn find(&self, id: &str) -> Option<&ChainNode<T>> {
        self.iter().find(|n| n.id == id)
    }

    /// The entry new wraps use.
    pub(crate) fn current(&self) -> &ChainNode<T> {
        let index = self.current.load(Ordering::Acquire);
        self.iter().nth(index).unwrap_or(&self.head)
    }

    /// Makes the entry with `id` current (it must exist); returns whether it did.
    pub(crate) fn set_current(&self, id: &str) -> bool {
        match self.iter().position(|n| n.id == id) {
            Some(index) => {
                self.current.store(index, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// The entry with `id`, appended with `make()` when it is not there yet. Callers that may
    /// race hold their own lock around it; a lost race only appends after the winner.
    pub(crate) fn get_or_append(&self, id: &str, make: impl FnOnce() -> T) -> &ChainNode<T> {
        if let Some(found) = self.find(id) {
            return found;
        }
        let mut pending = Some(ChainNode {
            id: id.to_owned(),
            data: make(),
            next: OnceLock::new(),
        });
        let mut node = &self.head;
        loop {
            if let Some(next) = node.next.get() {
                node = next;
                continue;
            }
            let Some(new) = pending.take() else {
                return node;
            };
            match node.next.set(Box::new(new)) {
                Ok(()) => {
                    if let Some(added) = node.next.get() {
                        return added;
                    }
                }
                Err(back) => pending = Some(*back),
            }
        }
    }
}

impl<T> fmt::Debug for KeyChain<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyChain")
            .field(
                "ids",
                &self.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
            )
            .field("current", &self.current().id)
            .finish()
    }
}
