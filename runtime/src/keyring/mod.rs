//! Key scopes, KEK versions and their lifecycle, the KEK cache and the [`KeyRing`].
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
//! ([`AuditRecord`]: who, when, why, from which state to which).

mod cache;
mod clock;
mod ring;
mod types;

pub use cache::{CacheConfig, KekCache};
pub use clock::{Clock, ManualClock, SystemClock, UnixTime};
pub use ring::{FieldPolicy, KeyRing, KeyRingBuilder, KmsCallCounts};
pub use types::{
    AuditInfo, AuditRecord, KekRecord, KekState, KekVersion, KeyAction, KeyScope, RecordUpdate,
    StoreChange, WrappedKek,
};
