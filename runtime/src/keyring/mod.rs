//! The [`KeyRing`] and its KEK cache: the one place that seals, opens and changes key state.
//!
//! The vocabulary it works with (scopes, versions, states, records, audit entries, the clock)
//! lives one floor down in [`crate::key`].
//!
//! # Lifecycle
//!
//! ```text
//!            rotate                 retire / grace ends         destroy
//!  Active ─────────────▶ Grace{until} ───────────────▶ Retired ─────────▶ Destroyed
//!    ▲   (rotate with         ▲  │ extend                │
//!    │    zero grace) ────────┼──┼──────────────────────▶│
//!    │                        └──┴───── reinstate ◀───────┘
//!  create
//! ```
//!
//! * `Active`: seals and opens. Exactly one per scope, from `create_scope` on.
//! * `Grace { until }`: opens (and can be re-wrapped) until `until`; never seals.
//! * `Retired`: opens nothing. Kept, still wrapped, so the migrator can report rows on it and a
//!   mistake can be undone with `reinstate`.
//! * `Destroyed`: the wrapped material is erased from the key store. Terminal. Values sealed
//!   under it are crypto-shredded.
//!
//! Every transition is one atomic key-store change that carries its audit record
//! ([`AuditRecord`](crate::key::AuditRecord): who, when, why, from which state to which).

mod cache;
mod fields;
mod integrity;
mod ring;
mod shred;
mod tags;

pub use cache::{CacheConfig, KekCache};
pub use integrity::{INTEGRITY_SCOPE, RESERVED_SCOPE_PREFIX, StoreVerification};
pub use ring::{FieldPolicy, KeyRing, KeyRingBuilder, KmsCallCounts};
pub use shred::{ShredReport, ShredState, ShredStatus, shred_status};
pub use tags::{audit_tag, record_tag};
