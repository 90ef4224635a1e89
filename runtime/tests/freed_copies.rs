//! Sealing and opening a `Json<T>` value leaves no freed copy of its plaintext on the heap.
//!
//! The detector reads this process's own writable memory (`/proc/self/maps` and
//! `/proc/self/mem`, no `unsafe`) and counts a canary that exists only at run time: its random
//! part never appears in the binary, and the needle is kept masked so the search does not find
//! itself. glibc keeps a freed chunk's bytes (only its first 16 bytes hold allocator pointers),
//! so a plaintext buffer that was freed without being wiped is found. The positive control
//! serialises a value the plain way (`serde_json::to_vec`, whose buffer grows and frees its
//! smaller copies) and must be found before the sealed path is held to zero.
//!
//! Its own test binary: it scans the whole process, so no other test may run beside it.
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "test"
)]

use leakless::{FieldContext, FieldPolicy, Json, KeyRing, KeyScope, RowId};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::unix::fs::FileExt;
use zeroize::{Zeroize, Zeroizing};

mod common;
use common::local_ring;

/// The mask the needle is kept under, so the needle itself never matches.
const MASK: u8 = 0xA5;

/// A value whose own strings are wiped when it is dropped: what is left afterwards on the heap
/// came from the code under test, not from the test's value.
#[derive(Serialize, Deserialize)]
struct Address {
    street: String,
    city: String,
}

impl Drop for Address {
    fn drop(&mut self) {
        self.street.zeroize();
        self.city.zeroize();
    }
}

/// A canary unique to this run and its masked needle. The canary is built in a zeroizing
/// buffer, so it leaves no copy of its own.
fn canary(tag: &str) -> (Zeroizing<String>, Vec<u8>) {
    let mut random = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut random);
    let mut text = Zeroizing::new(String::with_capacity(64));
    text.push_str("LKFREED-");
    text.push_str(tag);
    text.push('-');
    for b in random {
        text.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
        text.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
    }
    random.zeroize();
    let needle = text.bytes().map(|b| b ^ MASK).collect();
    (text, needle)
}

/// An address (multi-line when `line_break` is `\n`) long enough that `serde_json::to_vec`'s first 128-byte buffer is
/// outgrown with the canary in it.
fn address(canary: &str, line_break: char) -> Address {
    let mut street = String::with_capacity(400);
    // Past the first 16 bytes of any buffer, which glibc overwrites when it frees a chunk.
    street.push_str("Flat 3, second floor, ");
    street.push_str(canary);
    // serde_json writes a string in runs between escapes: a `\n` ends the run that holds the
    // canary while the output is still in its first 128-byte buffer, and the long run after
    // it makes the buffer grow.
    street.push(line_break);
    street.push_str(&" Harbour Road".repeat(20));
    let mut city = String::with_capacity(64);
    city.push_str("Port Canary ");
    city.push_str(canary);
    Address { street, city }
}

/// Holes in the heap: 128-byte blocks freed between live ones, so that a growing buffer that
/// starts in one (serde_json's first buffer is 128 bytes) cannot grow in place and is copied,
/// as in a busy application's heap. Keep the returned blocks alive while measuring.
fn fragmented_heap() -> Vec<Vec<u8>> {
    let blocks: Vec<Vec<u8>> = (0..64).map(|_| vec![0u8; 128]).collect();
    blocks
        .into_iter()
        .enumerate()
        .filter_map(|(i, b)| (i % 2 == 0).then_some(b))
        .collect()
}

/// Counts a masked needle in this process's writable, private memory. It allocates nothing
/// while it counts (files opened and buffers made up front, outside malloc's arenas): an
/// allocation of its own could reuse, and overwrite, the very freed chunk it looks for.
struct MemoryScan {
    maps: File,
    mem: File,
    maps_text: Vec<u8>,
    chunk: Vec<u8>,
}

impl MemoryScan {
    fn new() -> Self {
        Self {
            maps: File::open("/proc/self/maps").expect("open /proc/self/maps"),
            mem: File::open("/proc/self/mem").expect("open /proc/self/mem"),
            // Both far above malloc's mmap threshold, so they live in mappings of their own.
            maps_text: vec![0u8; 4 << 20],
            chunk: vec![0u8; 1 << 20],
        }
    }

    /// The address ranges of the scanner's own buffers, which the scan skips: reading memory
    /// into `chunk` and then `chunk` itself would count the same bytes twice.
    fn own(&self) -> [std::ops::Range<u64>; 2] {
        [&self.maps_text, &self.chunk].map(|b| {
            let at = b.as_ptr() as u64;
            at..at + b.len() as u64
        })
    }

    fn occurrences(&mut self, needle: &[u8]) -> usize {
        let mut len = 0;
        loop {
            let n = self
                .maps
                .read_at(&mut self.maps_text[len..], len as u64)
                .expect("read /proc/self/maps");
            if n == 0 {
                break;
            }
            len += n;
            assert!(
                len < self.maps_text.len(),
                "/proc/self/maps outgrew its buffer"
            );
        }
        // This thread's stack holds cipher blocks and other temporaries of the code under
        // test: stack residue is not what this test measures (freed heap memory is), so its
        // region is left out, as is the main thread's `[stack]`.
        let marker = 0u8;
        let stack = std::ptr::from_ref(&marker) as u64;
        let own = self.own();
        let overlap = needle.len() - 1;
        let mut found = 0;
        let text = std::str::from_utf8(&self.maps_text[..len]).expect("maps is text");
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
                continue;
            };
            let path = fields.nth(3).unwrap_or("");
            // Heap and anonymous mappings (malloc arenas, large chunks, other threads'
            // stacks); not the kernel's special pages and not mapped files.
            if !perms.starts_with("rw") || !(path.is_empty() || path == "[heap]") {
                continue;
            }
            let (start, end) = range.split_once('-').expect("maps range");
            let start = u64::from_str_radix(start, 16).expect("start");
            let end = u64::from_str_radix(end, 16).expect("end");
            if (start..end).contains(&stack) {
                continue;
            }
            let mut at = start;
            while at < end {
                if let Some(skip) = own.iter().find(|r| r.contains(&at)) {
                    at = skip.end;
                    continue;
                }
                // Up to the region's end, or up to one of our buffers where it lies ahead.
                let stop = own
                    .iter()
                    .filter(|r| (at..end).contains(&r.start))
                    .map(|r| r.start)
                    .min()
                    .unwrap_or(end);
                let want = usize::try_from((stop - at).min(self.chunk.len() as u64))
                    .expect("chunk length");
                let Ok(n) = self.mem.read_at(&mut self.chunk[..want], at) else {
                    break;
                };
                if n == 0 {
                    break;
                }
                found += self.chunk[..n]
                    .windows(needle.len())
                    .filter(|w| is_canary(w, needle))
                    .count();
                at += n as u64;
                if at < stop && n > overlap {
                    // Step back so a canary across two reads is seen once, in the second.
                    at -= overlap as u64;
                }
            }
        }
        self.chunk.as_mut_slice().zeroize();
        found
    }
}

/// A key ring with one scope, `patients`, and that scope.
fn ring() -> (KeyRing, KeyScope) {
    (
        local_ring(&["patients"]),
        KeyScope::new("patients").unwrap(),
    )
}

/// Whether `text` is the canary behind `needle`.
fn is_canary(text: &[u8], needle: &[u8]) -> bool {
    text.len() == needle.len() && text.iter().zip(needle).all(|(b, m)| b ^ MASK == *m)
}

#[test]
fn sealing_and_opening_json_leave_no_freed_plaintext() {
    let (ring, scope) = ring();
    let ctx = FieldContext::new("patients", "address", RowId::Int(1), 1);
    let policy = FieldPolicy::default();
    let mut scan = MemoryScan::new();

    // Positive control: encoding the plain way, `serde_json::to_vec` wrapped in `Zeroizing`,
    // wipes the final buffer but not the smaller ones it outgrew, and the detector finds those.
    let (control, control_needle) = canary("CONTROL");
    let control_hits = {
        let value = address(&control, '\n');
        drop(control);
        let holes = fragmented_heap();
        let json = Zeroizing::new(serde_json::to_vec(&value).unwrap());
        assert!(
            json.len() > 256,
            "the value must outgrow serde_json's first buffers"
        );
        drop(json);
        let hits = scan.occurrences(&control_needle);
        drop(holes);
        hits
    };
    assert!(
        control_hits >= 1,
        "detector broken: the outgrown JSON buffers were not found ({control_hits} hits)"
    );

    // Sealing: encode and seal a multi-line value, then drop it. Its own two copies (street
    // and city) are live until then.
    let (secret, needle) = canary("SEALED");
    let value = Json(address(&secret, '\n'));
    drop(secret);
    let live = scan.occurrences(&needle);
    assert_eq!(live, 2, "the value's own copies");
    let holes = fragmented_heap();
    let encoded = leakless::Sealable::to_plaintext(&value).unwrap();
    drop(encoded);
    let after_encode = scan.occurrences(&needle) - live;
    let envelope = ring.seal_value(&scope, &ctx, &value, &policy).unwrap();
    drop(value);
    let after_seal = scan.occurrences(&needle);
    drop(holes);
    assert_eq!(
        (after_encode, after_seal),
        (0, 0),
        "freed copies of the plaintext left on the heap after encoding and sealing"
    );
    drop(envelope);

    // Opening a value whose strings need no JSON escapes leaves no copy either. (A string with
    // escapes is unescaped in serde_json's own scratch buffer, which it frees unwiped:
    // docs/plaintext-encoding.md states that limit.)
    let (secret, needle) = canary("OPENED");
    let value = Json(address(&secret, ' '));
    drop(secret);
    let envelope = ring.seal_value(&scope, &ctx, &value, &policy).unwrap();
    drop(value);
    let holes = fragmented_heap();
    let opened: Json<Address> = ring.open_value(&scope, &ctx, &envelope).unwrap();
    let street = opened.0.street.as_bytes();
    assert!(is_canary(&street[22..22 + needle.len()], &needle));
    drop(opened);
    let after_open = scan.occurrences(&needle);
    drop(holes);
    assert_eq!(
        after_open, 0,
        "freed copies of the plaintext left on the heap after opening"
    );
}
