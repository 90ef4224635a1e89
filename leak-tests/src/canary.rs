//! Canaries: realistic values with a unique marker, written through the application's normal
//! code path and then searched for in everything a thief could take.
//!
//! A [`Canary`] has an id (`patients.address#3`), a marker (`LKC4F2A9Q1`, unique per canary
//! and the only part of a value a report ever shows), a [`CanaryKind`] and the value itself.
//! Canaries come from a [`SchemaManifest`] ([`CanarySet::from_manifest`]: one per sealed
//! column and row, shaped by the column's name), are added by hand, or are loaded from a JSON
//! file ([`CanarySet::from_json`]). `Debug` never shows a value.

use std::fmt;

use leakless::manifest::{PlaintextEncoding, SchemaManifest};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::Error;

/// The shape of a canary's value, which decides how it is encoded when searched for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryKind {
    /// A short or medium text: an address, an e-mail address, a name.
    Text,
    /// A GPS point (latitude, longitude in degrees).
    Gps,
    /// A long text such as a transcript: any window of it above the documented length counts.
    Transcript,
    /// Raw bytes (given as hex in JSON).
    Bytes,
}

/// A canary's value.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CanaryValue {
    /// Text (kinds `text` and `transcript`).
    Text(String),
    /// A GPS point.
    Gps {
        /// Latitude in degrees.
        lat: f64,
        /// Longitude in degrees.
        lon: f64,
    },
    /// Raw bytes, as hex in JSON.
    Hex {
        /// The bytes in hex.
        hex: String,
    },
}

impl fmt::Debug for CanaryValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CanaryValue::Text(_) => "Text(<redacted>)",
            CanaryValue::Gps { .. } => "Gps(<redacted>)",
            CanaryValue::Hex { .. } => "Hex(<redacted>)",
        })
    }
}

impl Drop for CanaryValue {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        match self {
            CanaryValue::Text(s) | CanaryValue::Hex { hex: s } => s.zeroize(),
            CanaryValue::Gps { lat, lon } => {
                *lat = 0.0;
                *lon = 0.0;
            }
        }
    }
}

/// One canary. `Debug` shows id, marker and kind, never the value.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Canary {
    /// A stable id for reports, e.g. `patients.address#3`.
    pub id: String,
    /// A unique marker embedded in text values (and named in reports): the only part of a
    /// value a report ever prints. For GPS and byte values it is only a label.
    pub marker: String,
    /// The value's shape.
    pub kind: CanaryKind,
    /// The value.
    pub value: CanaryValue,
    /// Whether this canary is a positive control: planted on purpose into a leaky control, so
    /// it must be found (a miss is "detector broken"), and finding it is not a leak.
    #[serde(default)]
    pub control: bool,
}

leakless::debug_fields!(Canary, |c| {
    "id": c.id,
    "marker": c.marker,
    "kind": c.kind,
    "control": c.control,
});

impl Canary {
    /// A text canary (kind [`CanaryKind::Text`]). The marker must occur in the value.
    ///
    /// # Errors
    /// [`Error::Canary`] when the marker is not in the value.
    pub fn text(id: &str, marker: &str, value: &str) -> Result<Self, Error> {
        Self::texty(id, marker, value, CanaryKind::Text)
    }

    /// A transcript canary (kind [`CanaryKind::Transcript`]). The marker must occur in the
    /// value.
    ///
    /// # Errors
    /// [`Error::Canary`] when the marker is not in the value.
    pub fn transcript(id: &str, marker: &str, value: &str) -> Result<Self, Error> {
        Self::texty(id, marker, value, CanaryKind::Transcript)
    }

    fn texty(id: &str, marker: &str, value: &str, kind: CanaryKind) -> Result<Self, Error> {
        if marker.len() < 6 || !value.contains(marker) {
            return Err(Error::Canary {
                id: id.to_owned(),
                problem: "the marker must be at least 6 bytes and occur in the value".into(),
            });
        }
        Ok(Self {
            id: id.to_owned(),
            marker: marker.to_owned(),
            kind,
            value: CanaryValue::Text(value.to_owned()),
            control: false,
        })
    }

    /// A GPS canary. `marker` only labels it in reports.
    #[must_use]
    pub fn gps(id: &str, marker: &str, lat: f64, lon: f64) -> Self {
        Self {
            id: id.to_owned(),
            marker: marker.to_owned(),
            kind: CanaryKind::Gps,
            value: CanaryValue::Gps { lat, lon },
            control: false,
        }
    }

    /// A byte canary. `marker` only labels it in reports.
    #[must_use]
    pub fn bytes(id: &str, marker: &str, value: &[u8]) -> Self {
        Self {
            id: id.to_owned(),
            marker: marker.to_owned(),
            kind: CanaryKind::Bytes,
            value: CanaryValue::Hex {
                hex: hex::encode(value),
            },
            control: false,
        }
    }

    /// A canary from a real value (the residue scan): a real value holds no marker, so the
    /// marker is the id itself (`customers.address#row=1234`), the only handle reports print.
    /// The kind is [`CanaryKind::Text`], or [`CanaryKind::Transcript`] above
    /// [`crate::encode::WINDOW`] times four bytes.
    #[must_use]
    pub fn real_text(id: &str, value: &str) -> Self {
        Self {
            id: id.to_owned(),
            marker: id.to_owned(),
            kind: if value.len() > crate::encode::WINDOW * 4 {
                CanaryKind::Transcript
            } else {
                CanaryKind::Text
            },
            value: CanaryValue::Text(value.to_owned()),
            control: false,
        }
    }

    /// A canary from real bytes (the residue scan); the marker is the id (see
    /// [`Self::real_text`]).
    #[must_use]
    pub fn real_bytes(id: &str, value: &[u8]) -> Self {
        Self::bytes(id, id, value)
    }

    /// The same canary marked as a positive control.
    #[must_use]
    pub fn as_control(mut self) -> Self {
        self.control = true;
        self
    }

    /// The text of a text or transcript canary.
    #[must_use]
    pub fn text_value(&self) -> Option<&str> {
        match &self.value {
            CanaryValue::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The point of a GPS canary.
    #[must_use]
    pub fn gps_value(&self) -> Option<(f64, f64)> {
        match self.value {
            CanaryValue::Gps { lat, lon } => Some((lat, lon)),
            _ => None,
        }
    }

    /// The bytes of a byte canary (decoded from hex), or the UTF-8 of a text canary.
    ///
    /// # Errors
    /// [`Error::Canary`] for malformed hex or a GPS canary.
    pub fn raw_bytes(&self) -> Result<Zeroizing<Vec<u8>>, Error> {
        match &self.value {
            CanaryValue::Text(s) => Ok(Zeroizing::new(s.as_bytes().to_vec())),
            CanaryValue::Hex { hex } => {
                hex::decode(hex)
                    .map(Zeroizing::new)
                    .map_err(|e| Error::Canary {
                        id: self.id.clone(),
                        problem: format!("value is not hex: {e}"),
                    })
            }
            CanaryValue::Gps { .. } => Err(Error::Canary {
                id: self.id.clone(),
                problem: "a GPS canary has no byte value".into(),
            }),
        }
    }

    fn check(&self) -> Result<(), Error> {
        let bad = |problem: &str| Error::Canary {
            id: self.id.clone(),
            problem: problem.to_owned(),
        };
        if self.id.is_empty() || self.marker.is_empty() {
            return Err(bad("id and marker must not be empty"));
        }
        match (&self.value, self.kind) {
            (CanaryValue::Text(s), CanaryKind::Text | CanaryKind::Transcript) => {
                // A marker equal to the id labels a real value (see `Canary::real_text`).
                if self.marker != self.id && !s.contains(&self.marker) {
                    return Err(bad("the marker does not occur in the value"));
                }
                if s.len() < crate::encode::MIN_NEEDLE_LEN {
                    return Err(bad(
                        "the value is shorter than 8 bytes: too short to scan for",
                    ));
                }
            }
            (CanaryValue::Gps { lat, lon }, CanaryKind::Gps) => {
                if !(lat.is_finite() && lon.is_finite()) || lat.abs() > 90.0 || lon.abs() > 180.0 {
                    return Err(bad("the GPS point is not a valid latitude/longitude"));
                }
            }
            (CanaryValue::Hex { .. }, CanaryKind::Bytes) => {
                if self.raw_bytes()?.len() < crate::encode::MIN_NEEDLE_LEN {
                    return Err(bad(
                        "the value is shorter than 8 bytes: too short to scan for",
                    ));
                }
            }
            _ => return Err(bad("the value does not match the kind")),
        }
        self.check_labels()
    }

    /// Refuses an id or marker that would print (most of) the value in a report: a text
    /// canary's marker must be at most half its value, and neither label may contain any
    /// needle of the value (any searched window, in any encoding).
    ///
    /// A real value's canary (the residue scan) is labelled by its id only (table, column and
    /// row id, which reports name by design), and is not checked: its value holds no marker.
    fn check_labels(&self) -> Result<(), Error> {
        if self.marker == self.id {
            return Ok(());
        }
        if let Some(text) = self.text_value()
            && self.marker.chars().count() * 2 > text.chars().count()
        {
            return Err(Error::Canary {
                id: self.id.clone(),
                problem: "the marker is most of the value, so reports would show the value: \
                          use a short random marker inside a longer value"
                    .into(),
            });
        }
        let mut needles = Vec::new();
        crate::encode::needles_for(0, self, &mut needles)?;
        for (what, label) in [("marker", &self.marker), ("id", &self.id)] {
            let label = label.as_bytes();
            if needles.iter().any(|n| {
                label
                    .windows(n.bytes.len())
                    .any(|w| w == n.bytes.as_slice())
            }) {
                return Err(Error::Canary {
                    id: if what == "id" {
                        "(an id holding its value)".to_owned()
                    } else {
                        self.id.clone()
                    },
                    problem: format!(
                        "the {what} contains the value (or a searched part of it), so reports \
                         would show the value: use a label that does not"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// A set of canaries with unique ids and markers. `Debug` lists the canaries (never a value).
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct CanarySet {
    /// The canaries. Add through [`CanarySet::push`], which checks uniqueness in constant time
    /// (an index of hashes kept beside this list, rebuilt when the list's length changed
    /// behind its back).
    pub canaries: Vec<Canary>,
    /// Hashes of every id and marker of `canaries[..indexed]`.
    #[serde(skip)]
    taken: std::collections::HashSet<u64, NameHashBuilder>,
    /// How many canaries `taken` covers.
    #[serde(skip)]
    indexed: usize,
}

leakless::debug_fields!(CanarySet, |s| { "canaries": s.canaries });

impl PartialEq for CanarySet {
    fn eq(&self, other: &Self) -> bool {
        self.canaries == other.canaries
    }
}

type NameHashBuilder = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

fn name_hash(kind: u8, name: &str) -> u64 {
    use std::hash::{BuildHasher as _, Hash as _, Hasher as _};
    let mut h = NameHashBuilder::default().build_hasher();
    kind.hash(&mut h);
    name.hash(&mut h);
    h.finish()
}

/// Returns a fresh marker: `LK` plus 8 characters of an alphabet without look-alikes, e.g.
/// `LKQ7M2X9PA`. 40 random bits: unique in practice, and never a word.
#[must_use]
pub fn fresh_marker() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTVWXYZ23456789";
    let mut rng = rand::thread_rng();
    let mut m = String::from("LK");
    for _ in 0..8 {
        let i = rng.gen_range(0..ALPHABET.len());
        m.push(char::from(ALPHABET.get(i).copied().unwrap_or(b'Q')));
    }
    m
}

const STREETS: [&str; 6] = [
    "Lantern Row",
    "Quarry Lane",
    "Musterweg",
    "Impasse des Glycines",
    "Placeholder Avenue",
    "Sample Close",
];
const TOWNS: [&str; 5] = [
    "Exampleton EX1 4QT",
    "12345 Beispielstadt",
    "75999 Villefictive",
    "Sampletown NY 10999",
    "Lekki Phase 9, Lagos",
];
const WORDS: [&str; 24] = [
    "patient",
    "reports",
    "intermittent",
    "headaches",
    "after",
    "long",
    "screen",
    "sessions",
    "advised",
    "follow-up",
    "swelling",
    "ankle",
    "balance",
    "exercises",
    "glucose",
    "ordered",
    "precaution",
    "vaccinations",
    "über",
    "Größere",
    "Belastung",
    "résumé",
    "weekly",
    "swims",
];

const TOKEN: &[u8] = b"abcdefghjkmnpqrstvwxyz23456789";

/// The transcript length, in bytes, of generated transcript canaries (several detection
/// windows long, and long enough to be TOASTed and compressed by PostgreSQL).
pub const GENERATED_TRANSCRIPT_LEN: usize = 2600;

impl CanarySet {
    /// An empty set.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a canary.
    ///
    /// # Errors
    /// [`Error::Canary`] when the canary is malformed or its id or marker is already taken.
    pub fn push(&mut self, canary: Canary) -> Result<(), Error> {
        canary.check()?;
        if self.indexed != self.canaries.len() {
            self.taken.clear();
            for c in &self.canaries {
                self.taken.insert(name_hash(0, &c.id));
                self.taken.insert(name_hash(1, &c.marker));
            }
            self.indexed = self.canaries.len();
        }
        let (id_hash, marker_hash) = (name_hash(0, &canary.id), name_hash(1, &canary.marker));
        // A hash hit is verified exactly (a collision of two different names is not a clash).
        if (self.taken.contains(&id_hash) || self.taken.contains(&marker_hash))
            && self
                .canaries
                .iter()
                .any(|c| c.id == canary.id || c.marker == canary.marker)
        {
            return Err(Error::Canary {
                id: canary.id,
                problem: "id or marker already used by another canary".into(),
            });
        }
        self.taken.insert(id_hash);
        self.taken.insert(marker_hash);
        self.canaries.push(canary);
        self.indexed = self.canaries.len();
        Ok(())
    }

    /// Adds every canary of `other`.
    ///
    /// # Errors
    /// As [`Self::push`].
    pub fn extend(&mut self, other: CanarySet) -> Result<(), Error> {
        for c in other.canaries {
            self.push(c)?;
        }
        Ok(())
    }

    /// How many canaries.
    #[must_use]
    pub fn len(&self) -> usize {
        self.canaries.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.canaries.is_empty()
    }

    /// The canary with this id.
    #[must_use]
    pub fn get(&self, id: &str) -> Option<&Canary> {
        self.canaries.iter().find(|c| c.id == id)
    }

    /// Generates `rows` canaries for every sealed column of `manifest`, shaped by the column's
    /// name: `gps`/`location`/`position`/`coord*` get GPS points, `transcript`/`notes`/`body`/
    /// `text` get transcripts of [`GENERATED_TRANSCRIPT_LEN`] bytes (words interleaved with random
    /// tokens, so that every window is unique to the canary), `bytes` columns get random
    /// bytes, and every other column a text value (an address-like line, an e-mail address for
    /// `*mail*`). Ids read `table.column#row`.
    ///
    /// # Errors
    /// [`Error::Canary`] if the manifest is invalid.
    pub fn from_manifest(manifest: &SchemaManifest, rows: usize) -> Result<Self, Error> {
        manifest.validate().map_err(|e| Error::Canary {
            id: "manifest".into(),
            problem: e.to_string(),
        })?;
        let mut set = Self::new();
        for t in &manifest.tables {
            for c in &t.columns {
                for row in 0..rows {
                    let id = format!("{}.{}#{row}", t.table, c.column);
                    set.push(generate(&id, &c.column, c.encoding))?;
                }
            }
        }
        Ok(set)
    }

    /// Reads a canary file: JSON `{"canaries": [{"id", "marker", "kind", "value",
    /// "control"?}]}` where `value` is a string (text, transcript), `{"lat", "lon"}` (gps) or
    /// `{"hex"}` (bytes).
    ///
    /// # Errors
    /// [`Error::Canary`] for malformed JSON (with line and column) or an invalid canary.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        let raw: CanarySet = serde_json::from_str(text).map_err(|e| Error::Canary {
            id: "canary file".into(),
            problem: e.to_string(),
        })?;
        let mut set = Self::new();
        set.extend(raw)?;
        Ok(set)
    }

    /// The set as pretty JSON (holds the values: keep the file as secret as the test data).
    ///
    /// # Errors
    /// [`Error::Canary`] if serialisation fails.
    pub fn to_json(&self) -> Result<Zeroizing<String>, Error> {
        serde_json::to_string_pretty(self)
            .map(Zeroizing::new)
            .map_err(|e| Error::Canary {
                id: "canary set".into(),
                problem: e.to_string(),
            })
    }
}

/// One generated canary for a column of the given name and plaintext encoding.
#[must_use]
pub fn generate(id: &str, column: &str, encoding: PlaintextEncoding) -> Canary {
    let marker = fresh_marker();
    let mut rng = rand::thread_rng();
    let col = column.to_ascii_lowercase();
    let pick = |list: &[&'static str], rng: &mut rand::rngs::ThreadRng| -> &'static str {
        list.get(rng.gen_range(0..list.len()))
            .copied()
            .unwrap_or("x")
    };
    if ["gps", "location", "position", "coord", "geo", "latlon"]
        .iter()
        .any(|k| col.contains(k))
    {
        // Six to seven decimals, the precision a phone reports.
        let lat = f64::from(rng.gen_range(-80_000_000i32..80_000_000)) / 1e6 + 0.000_000_3;
        let lon = f64::from(rng.gen_range(-179_000_000i32..179_000_000)) / 1e6 + 0.000_000_7;
        return Canary::gps(id, &marker, lat, lon);
    }
    if encoding == PlaintextEncoding::Bytes {
        let mut b = vec![0u8; 32];
        rng.fill(b.as_mut_slice());
        return Canary::bytes(id, &marker, &b);
    }
    if [
        "transcript",
        "note",
        "body",
        "text",
        "comment",
        "description",
    ]
    .iter()
    .any(|k| col.contains(k))
    {
        // Every second word is followed by a random reading (`q7x4k`), so that every window
        // of the detection length is unique to this canary, not a phrase any text may share.
        let mut s = format!("Consultation {marker}: ");
        let mut n = 0u32;
        while s.len() < GENERATED_TRANSCRIPT_LEN {
            s.push_str(pick(&WORDS, &mut rng));
            s.push(' ');
            n += 1;
            if n.is_multiple_of(2) {
                for _ in 0..5 {
                    let i = rng.gen_range(0..TOKEN.len());
                    s.push(char::from(TOKEN.get(i).copied().unwrap_or(b'x')));
                }
                s.push_str(if rng.gen_range(0..6) == 0 { ". " } else { " " });
            }
            if rng.gen_range(0..40) == 0 {
                s.push_str(&marker);
                s.push_str(". ");
            }
        }
        return Canary {
            id: id.to_owned(),
            marker,
            kind: CanaryKind::Transcript,
            value: CanaryValue::Text(s),
            control: false,
        };
    }
    let value = if col.contains("mail") {
        format!(
            "{}.{}@mail.example",
            marker.to_ascii_lowercase(),
            rng.gen_range(10..99)
        )
    } else {
        // A house number with a letter (`1742c`) opens the value and the marker sits in its
        // middle, so each of the value's fragments (see `encode::WINDOW`) holds random
        // characters: two canaries that share a street and a town share no fragment, and a
        // leak of one is never reported as the other.
        format!(
            "{}{} {}, Flat {marker}, {}",
            rng.gen_range(1..10_000),
            char::from(b'a' + rng.gen_range(0..26u8)),
            pick(&STREETS, &mut rng),
            pick(&TOWNS, &mut rng)
        )
    };
    // E-mail canaries carry the marker lowercased; keep the marker as it appears.
    let marker = if col.contains("mail") {
        marker.to_ascii_lowercase()
    } else {
        marker
    };
    Canary {
        id: id.to_owned(),
        marker,
        kind: CanaryKind::Text,
        value: CanaryValue::Text(value),
        control: false,
    }
}
