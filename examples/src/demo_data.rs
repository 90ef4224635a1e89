//! The fictional patients of the quickstart demo, and the GPS byte encoding.
//!
//! Every name, address, coordinate and transcript here is made up. Names are plain display
//! labels in the demo (the one unsealed column); addresses, e-mail addresses, GPS points and
//! transcripts are the sensitive fields that `quickstart` seals. One patient has no transcript,
//! to show that a `None` stays SQL `NULL`.

use std::fmt;

use leakless_leaktest::{Canary, CanarySet};

/// Length in bytes of an encoded GPS point (see [`encode_gps`]).
pub const GPS_LEN: usize = 16;

/// One fictional patient.
///
/// `Debug` prints only the name and the lengths of the sensitive fields, never their values.
#[derive(Clone, PartialEq)]
pub struct DemoPatient {
    /// Display name (stored unsealed in the demo).
    pub name: String,
    /// Postal address (sealed).
    pub address: String,
    /// E-mail address (sealed, with a blind index for look-ups).
    pub email: String,
    /// Latitude in degrees, WGS 84 (sealed together with `lon`).
    pub lat: f64,
    /// Longitude in degrees, WGS 84 (sealed together with `lat`).
    pub lon: f64,
    /// Consultation transcript (sealed), if there was a consultation.
    pub transcript: Option<String>,
}

impl DemoPatient {
    /// The GPS point as the 16 bytes that get sealed (see [`encode_gps`]).
    #[must_use]
    pub fn gps_bytes(&self) -> [u8; GPS_LEN] {
        encode_gps(self.lat, self.lon)
    }

    /// The coordinates as decimal text, the way a careless log line would print them
    /// (`"48.85837"`, `"2.294481"`). Tests look for these in the programs' output.
    #[must_use]
    pub fn gps_texts(&self) -> [String; 2] {
        [self.lat.to_string(), self.lon.to_string()]
    }
}

impl fmt::Debug for DemoPatient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemoPatient")
            .field("name", &self.name)
            .field("address", &format_args!("<{} bytes>", self.address.len()))
            .field("email", &format_args!("<{} bytes>", self.email.len()))
            .field("gps", &format_args!("<{GPS_LEN} bytes>"))
            .field(
                "transcript",
                &format_args!(
                    "<{} bytes>",
                    self.transcript.as_ref().map_or(0, String::len)
                ),
            )
            .finish()
    }
}

/// The values of one patient as the leak scan sees them (a view of a [`DemoPatient`], or of a
/// model loaded back from a database).
#[derive(Clone, Copy)]
pub struct ScanValues<'a> {
    /// The display name, stored in the clear: a positive control.
    pub name: &'a str,
    /// The sealed postal address.
    pub address: &'a str,
    /// The sealed e-mail address.
    pub email: &'a str,
    /// The sealed transcript, if any.
    pub transcript: Option<&'a str>,
    /// The sealed GPS point (latitude, longitude).
    pub gps: (f64, f64),
}

impl fmt::Debug for ScanValues<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScanValues")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl DemoPatient {
    /// This patient's values for [`canaries`].
    #[must_use]
    pub fn scan_values(&self) -> ScanValues<'_> {
        ScanValues {
            name: &self.name,
            address: &self.address,
            email: &self.email,
            transcript: self.transcript.as_deref(),
            gps: (self.lat, self.lon),
        }
    }
}

/// The patients' values as canaries of the leak-test harness (`leakless-leaktest`): every
/// sealed value a canary `patient N address` (`email`, `transcript`, `gps`; N from 1), which no
/// stored file may hold in any encoding the harness searches, and every unsealed name a
/// positive control `patient N name`, which a scan that reads the stored data must find.
/// Reports name the canaries by these ids, never by value.
///
/// # Errors
/// The harness's error when two patients share a value (ids must be unique).
pub fn canaries<'a>(
    people: impl IntoIterator<Item = ScanValues<'a>>,
) -> Result<CanarySet, leakless_leaktest::Error> {
    let mut set = CanarySet::new();
    for (i, p) in people.into_iter().enumerate() {
        let n = i.saturating_add(1);
        set.push(Canary::real_text(
            &format!("patient {n} address"),
            p.address,
        ))?;
        set.push(Canary::real_text(&format!("patient {n} email"), p.email))?;
        if let Some(t) = p.transcript {
            set.push(Canary::real_text(&format!("patient {n} transcript"), t))?;
        }
        let gps = format!("patient {n} gps");
        set.push(Canary::gps(&gps, &gps, p.gps.0, p.gps.1))?;
        set.push(Canary::real_text(&format!("patient {n} name"), p.name).as_control())?;
    }
    Ok(set)
}

/// The ids of [`canaries`]' positive controls, one per patient.
#[must_use]
pub fn name_controls(count: usize) -> Vec<String> {
    (1..=count).map(|n| format!("patient {n} name")).collect()
}

/// Encodes a GPS point as 16 bytes: the latitude then the longitude, each as an IEEE 754
/// binary64 in big-endian byte order (`f64::to_be_bytes`). Fixed size, so the demo seals it
/// without length padding.
#[must_use]
pub fn encode_gps(lat: f64, lon: f64) -> [u8; GPS_LEN] {
    let mut out = [0u8; GPS_LEN];
    let (a, b) = out.split_at_mut(8);
    a.copy_from_slice(&lat.to_be_bytes());
    b.copy_from_slice(&lon.to_be_bytes());
    out
}

/// Decodes [`encode_gps`]'s output; `None` unless `bytes` is exactly 16 bytes long.
#[must_use]
pub fn decode_gps(bytes: &[u8]) -> Option<(f64, f64)> {
    let (a, b) = bytes.split_first_chunk::<8>()?;
    let b: &[u8; 8] = b.try_into().ok()?;
    Some((f64::from_be_bytes(*a), f64::from_be_bytes(*b)))
}

/// The five demo patients. The fourth has no transcript. The last one's transcript is longer than 4 KiB, so it spans
/// several SQLite pages and lands in the top padding buckets.
#[must_use]
pub fn patients() -> Vec<DemoPatient> {
    vec![
        DemoPatient {
            name: "Ada Quickstart".into(),
            address: "17 Lantern Row, Flat 3, Exampleton EX1 4QT, United Kingdom".into(),
            email: "ada.quickstart@mail.example".into(),
            lat: 51.507_412,
            lon: -0.127_691,
            transcript: Some(
                "Patient reports intermittent headaches over the past three weeks, \
                mostly in the late afternoon after long screen sessions. No visual aura, no \
                nausea. Sleep about six hours a night. Advised a screen-break routine, more \
                water during the day, and a follow-up in four weeks if the pattern continues. \
                Blood pressure 122 over 79, resting pulse 68."
                    .into(),
            ),
        },
        DemoPatient {
            name: "Björn Beispiel".into(),
            address: "Musterweg 42, Hinterhaus 2. OG, 12345 Beispielstadt, Deutschland".into(),
            email: "bjoern.beispiel@post.example".into(),
            lat: 52.520_008,
            lon: 13.404_954,
            transcript: Some(
                "Follow-up on the sprained left ankle from the cycling fall. Swelling \
                has gone down markedly; the patient can bear full weight and walks without a \
                limp. Mild tenderness over the lateral ligament remains. Continue the balance \
                exercises twice a day, return to running gradually over the next fortnight. \
                Größere Belastung erst nach Rücksprache."
                    .into(),
            ),
        },
        DemoPatient {
            name: "Chloé Exemple".into(),
            address: "8 impasse des Glycines, Bâtiment B, 75999 Villefictive, France".into(),
            email: "chloe.exemple@courriel.example".into(),
            lat: 48.858_37,
            lon: 2.294_481,
            transcript: Some(
                "Annual check-up. The patient has no complaints apart from seasonal \
                hay fever, managed with an over-the-counter antihistamine. Vaccinations up to \
                date. Discussed family history of type 2 diabetes; fasting glucose ordered as a \
                precaution. Encouraged to keep the three weekly swims. Next routine visit in \
                twelve months."
                    .into(),
            ),
        },
        DemoPatient {
            name: "Dmitri Primer".into(),
            address: "Apartment 9C, 250 Placeholder Avenue, Sampletown, NY 10999, USA".into(),
            email: "dmitri.primer@inbox.example".into(),
            lat: 40.748_817,
            lon: -73.985_428,
            // Registered, not yet seen: no transcript, stored as SQL NULL.
            transcript: None,
        },
        DemoPatient {
            name: "Emeka Demo".into(),
            address: "Plot 11, Sample Close, off Fictional Crescent, Lekki Phase 9, Lagos".into(),
            email: "emeka.demo@webmail.example".into(),
            lat: 6.447_809,
            lon: 3.472_218,
            transcript: Some(long_transcript()),
        },
    ]
}

/// A transcript of well over 4 KiB: a numbered series of distinct session notes, so that every
/// part of it is unique (no repeated block a scanner could match by accident).
fn long_transcript() -> String {
    const TOPICS: [&str; 8] = [
        "sleep quality and the evening routine",
        "the physiotherapy plan for the lower back",
        "dietary changes and the food diary",
        "medication side effects and timing",
        "stress at work and the breathing exercises",
        "blood test results and what they mean",
        "walking distance and the step counter",
        "questions the patient brought from home",
    ];
    let mut out = String::from("Extended multidisciplinary review, recorded with consent. ");
    for session in 1..=40u32 {
        let topic = TOPICS
            .get(usize::try_from(session).unwrap_or(0) % TOPICS.len())
            .copied()
            .unwrap_or("general wellbeing");
        out.push_str(&format!(
            "Note {session}: discussed {topic}; the patient rated the week {score} out of ten \
             and agreed on goal number {goal} for the coming days. ",
            score = (session * 7) % 10 + 1,
            goal = session * 3 + 11,
        ));
    }
    out.push_str("End of review.");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gps_round_trips_and_is_big_endian() {
        let bytes = encode_gps(1.0, -2.0);
        assert_eq!(bytes[..8], 1.0f64.to_be_bytes());
        assert_eq!(bytes[8..], (-2.0f64).to_be_bytes());
        assert_eq!(decode_gps(&bytes), Some((1.0, -2.0)));
        assert_eq!(decode_gps(&bytes[..15]), None);
    }

    #[test]
    fn demo_data_has_the_promised_shape() {
        let all = patients();
        assert_eq!(all.len(), 5);
        assert!(
            all.iter()
                .any(|p| p.transcript.as_ref().is_some_and(|t| t.len() > 4096))
        );
        assert_eq!(all.iter().filter(|p| p.transcript.is_none()).count(), 1);
        for p in &all {
            if let Some(t) = &p.transcript {
                assert!(t.len() >= 300, "{p:?}");
            }
            assert!(p.email.contains('@'), "{p:?}");
            assert!(p.address.len() >= 24, "{p:?}");
            for t in p.gps_texts() {
                assert!(t.len() >= 6, "{p:?}");
            }
        }
    }

    #[test]
    fn debug_does_not_print_sensitive_fields() {
        for p in patients() {
            let shown = format!("{p:?}");
            assert!(!shown.contains(&p.address));
            assert!(!shown.contains(&p.email));
            if let Some(t) = &p.transcript {
                assert!(!shown.contains(&t[..40]));
            }
            assert!(!shown.contains(&p.gps_texts()[0]));
        }
    }
}
