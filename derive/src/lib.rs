//! The derive macro of leakless: `#[derive(Sealed)]` for models with sealed fields.
//!
//! Use it through the `leakless` crate (`leakless::Sealed`), which re-exports it and whose
//! hidden module its generated code calls with fully qualified paths.
//!
//! # What it generates
//!
//! For a model `Patient`:
//! * `PatientRow`, the stored form: every field of the model, sealed ones as `Vec<u8>` envelopes
//!   (`Option<Vec<u8>>` for `Option` fields, where `None` stays SQL `NULL`), plus one
//!   `Vec<u8>` column per blind index. It derives diesel's `Queryable`, `Selectable`,
//!   `Insertable` and `AsChangeset` (with `treat_none_as_null`), so ordinary diesel code
//!   inserts, updates and loads it; load with `.select(PatientRow::as_select())`.
//! * `impl leakless::Sealed for Patient`: `seal_row`, `open_row`, `seal_rows`, `open_rows`
//!   and `manifest()`. `open_row` opens every envelope with the row's own key scope (the
//!   static `scope`, or the prefix plus the loaded row's tenant field) as the expected one, so
//!   a value sealed under another scope (another tenant's) fails with
//!   `leakless::Error::WrongKeyScope` even where its table, column and row match.
//! * `impl Debug for Patient` that prints sealed fields as `<sealed>`. A second
//!   `#[derive(Debug)]` on the model is a compile error (conflicting implementations), so a
//!   sealed value cannot be printed through `Debug`.
//! * for each blind-indexed field `email`: `Patient::email_lookup(&ring, &value)` (with the
//!   tenant first, `(&ring, &tenant, &value)`, for an index key per tenant), the tokens to
//!   match with `patients::email_bidx.eq_any(tokens)`.
//!
//! # Required attributes (on the struct)
//!
//! ```text
//! #[leakless(table = patients, row_id = id, schema_version = 1, scope = "patients")]
//! ```
//!
//! * `table`: the diesel `table!` (a path); its last segment is the table name bound into
//!   every envelope.
//! * `row_id`: the field whose value identifies the row (`i64`, `i32`, `String`, `Vec<u8>`,
//!   `[u8; 16]`, or any `leakless::AsRowId`); known before the insert, so an application-made
//!   UUID is the normal choice.
//! * `schema_version`: bound into every envelope; bump it when a sealed field's type changes.
//! * `scope = "name"`: the key scope of every row; or, per tenant,
//!   `scope_prefix = "tenant:", scope_from = tenant_field` (the scope is the prefix followed
//!   by the field's `Display`).
//!
//! # Optional attributes (on a field)
//!
//! * `#[leakless(seal)]`: seal the field (its type implements `leakless::Sealable`:
//!   `String`, `Vec<u8>`, `leakless::Json<T>`, or `Option` of those).
//! * `#[leakless(seal(aead = "aes256gcm"))]`: the data AEAD, `xchacha20poly1305` (default) or
//!   `aes256gcm`; `padding = "marker_only"` for fixed-size values (default: length buckets).
//! * `#[leakless(seal(blind_index(column = email_bidx, scope = "bidx", normalize = "trim_lowercase", bytes = 16)))]`:
//!   an equality index in the column `email_bidx` under the dedicated index-key scope `bidx`;
//!   `normalize` is `none` (default), `trim`, `lowercase`, `trim_lowercase`, `nfc` or
//!   `nfkc_casefold` (see `leakless::Normalizer`); `bytes` is 4 to 32
//!   (default 16). On a per-tenant model, `scope_prefix = "bidx:"` instead of `scope` gives
//!   each tenant its own index key (scope `bidx:<tenant>`): equal values of two tenants get
//!   unrelated tokens, and the look-up takes the tenant,
//!   `Member::email_lookup(&ring, &tenant, &value)`.
//! * `#[leakless(seal(adopt(from = email_plain, stage = "read_plaintext")))]`: the field is being
//!   adopted from the legacy plaintext column `email_plain` (not a model field; the row gets it
//!   as `Option<String>` for a `String` field, `Option<Vec<u8>>` otherwise, and the sealed
//!   column becomes nullable). Stages: `read_plaintext` (a NULL envelope opens from the
//!   plaintext; writes fill both columns), `write_sealed_only` (reads the same; writes set the
//!   plaintext to NULL), `sealed_only` (the plaintext is ignored; a NULL envelope of a non-`Option`
//!   field is an error). A present envelope always wins. See `docs/adoption.md`. The source may
//!   have the field's own name (`adopt(from = email)` on field `email` stored elsewhere with
//!   `stored_in`); the row's field for it is then `email_plaintext`. A `Json<T>` field may be
//!   adopted from two numeric columns, `adopt(pair(lat = latitude, lon = longitude), stage =
//!   ...)`: the value is the JSON object of the two (`Option<f64>` row fields), and stage 1
//!   writes the value's `lat` and `lon` members back.
//! * `#[leakless(seal(column = "email"))]`: the column name bound into the envelopes (and into
//!   the blind-index key). Default: the field name. Bound names are what a stored envelope
//!   must match, so renaming a field without `column = "old_name"` makes its stored values
//!   fail to open (a typed error, never a wrong value).
//! * `#[leakless(seal(stored_in = email_sealed))]`: the table column that holds the envelopes
//!   (default: the field name); they still bind the field's name (or `column`), so they stay
//!   valid when moved to another column.
//! * `#[leakless(seal(moving(from = email_sealed, stage = "read_old")))]`: the envelopes are
//!   moving from the column `email_sealed` into the field's column. Writes fill both with the
//!   same envelope; stage `read_old` reads `email_sealed` first (a build writing only it may
//!   still run), `read_new` reads the field's column first (after `leakless-migrate copy`).
//!   The manifest lists `email_sealed` as a sealed column moving to the field's. With
//!   `stored_in` and `adopt(from = <the field's name>)` this lets a sealed column end with the
//!   legacy column's name, every step safe while two application
//!   versions run side by side (`docs/adoption.md`, "Keeping the column's name").

mod attr;
mod expand;
mod validate;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

use crate::attr::parse;
use crate::expand::expand;

/// Derives `leakless::Sealed` (see the crate docs for what it generates and its attributes).
#[proc_macro_derive(Sealed, attributes(leakless))]
pub fn derive_sealed(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match parse(&input).and_then(|model| expand(&input, &model)) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attr::{ADOPT_SYNTAX, MOVE_SYNTAX};

    fn expand_str(input: DeriveInput) -> String {
        let tokens = parse(&input)
            .and_then(|m| expand(&input, &m))
            .unwrap_or_else(|e| e.to_compile_error());
        prettyplease::unparse(&syn::parse2(tokens).unwrap())
    }

    /// Whole expansions as reviewed snapshots, one per model (each named as its snapshot file).
    #[test]
    fn expansion_snapshots() {
        let cases: [(&str, DeriveInput); 4] = [
            (
                // A model with every kind of field.
                "expansion_snapshot",
                syn::parse_quote! {
                    #[leakless(table = schema::visits, row_id = id, schema_version = 2,
                               scope_prefix = "tenant:", scope_from = clinic)]
                    pub struct Visit {
                        id: [u8; 16],
                        clinic: String,
                        #[leakless(seal(aead = "aes256gcm", blind_index(column = email_bidx, scope = "bidx", normalize = "trim", bytes = 8)))]
                        email: String,
                        #[leakless(seal(padding = "marker_only"))]
                        gps: leakless::Json<GeoPoint>,
                        #[leakless(seal)]
                        transcript: Option<String>,
                    }
                },
            ),
            (
                // A model adopting two plaintext columns (text and binary, stages 1 and 3):
                // extra plaintext columns in the row, a redacting row `Debug`, and the
                // manifest's adoption.
                "adoption_expansion_snapshot",
                syn::parse_quote! {
                    #[leakless(table = people, row_id = id, schema_version = 1, scope = "people")]
                    pub struct Person {
                        id: i64,
                        #[leakless(seal(adopt(from = address_plain, stage = "read_plaintext")))]
                        address: String,
                        #[leakless(seal(adopt(from = photo_plain, stage = "sealed_only")))]
                        photo: Option<Vec<u8>>,
                    }
                },
            ),
            (
                // The options that keep a column's name: `stored_in` with `adopt` from the
                // field's own name (the plaintext row field is renamed and mapped), and `moving`
                // (both columns written, the manifest listing the old one as moving to the new
                // one).
                "keep_name_expansion_snapshot",
                syn::parse_quote! {
                    #[leakless(table = customers, row_id = id, schema_version = 1, scope = "c")]
                    pub struct Customer {
                        id: i64,
                        #[leakless(seal(stored_in = email_sealed, adopt(from = email, stage = "read_plaintext")))]
                        email: String,
                        #[leakless(seal(moving(from = phone_sealed, stage = "read_old")))]
                        phone: Option<String>,
                        #[leakless(seal(column = "postcode"))]
                        zip: String,
                    }
                },
            ),
            (
                // A GPS point adopted from two numeric columns: two `Option<f64>` legacy
                // fields, the JSON object built from them on read, both written back in stage 1,
                // and the manifest's pair.
                "pair_adoption_expansion_snapshot",
                syn::parse_quote! {
                    #[leakless(table = places, row_id = id, schema_version = 1, scope = "p")]
                    pub struct Place {
                        id: i64,
                        #[leakless(seal(adopt(pair(lat = latitude, lon = longitude), stage = "read_plaintext")))]
                        gps: Option<leakless::Json<GeoPoint>>,
                    }
                },
            ),
        ];
        for (name, input) in cases {
            insta::assert_snapshot!(name, expand_str(input));
        }
    }

    /// `adopt` and `blind_index` on one field: the token column is nullable in the row (rows
    /// not yet adopted have none) and every write fills it.
    #[test]
    fn adopt_with_blind_index_writes_a_token() {
        let input: DeriveInput = syn::parse_quote! {
            #[leakless(table = people, row_id = id, schema_version = 1, scope = "p")]
            struct P {
                id: i64,
                #[leakless(seal(adopt(from = a_plain, stage = "read_plaintext"),
                                blind_index(column = a_bidx, scope = "bidx")))]
                a: String,
            }
        };
        let out = expand_str(input).split_whitespace().collect::<String>();
        assert!(
            out.contains("puba_bidx:::core::option::Option<::std::vec::Vec<u8>>"),
            "{out}"
        );
        assert!(
            out.contains("a_bidx:::core::option::Option::Some(::leakless::__private::blind_index("),
            "{out}"
        );
    }

    /// Bad `adopt`, pair-adoption and column-name attributes are compile errors naming what is
    /// wrong; an unknown `adopt` or `moving` stage, or one without `from`, also quotes the
    /// option's syntax.
    #[test]
    fn bad_attributes_are_rejected() {
        let cases: [(proc_macro2::TokenStream, &str, Option<&str>); 14] = [
            (
                quote::quote!(#[leakless(seal(adopt(from = a_plain, stage = "later")))] a: String),
                "unknown adoption stage",
                Some(ADOPT_SYNTAX),
            ),
            (
                quote::quote!(#[leakless(seal(adopt(stage = "sealed_only")))] a: String),
                "adopt needs `from`",
                Some(ADOPT_SYNTAX),
            ),
            (
                quote::quote!(#[leakless(seal(adopt(from = id, stage = "sealed_only")))] a: String),
                "column `id` is used twice",
                None,
            ),
            (
                quote::quote!(#[leakless(seal(adopt(pair(lat = a, lon = b), stage = "read_plaintext")))] g: String),
                "the field must be `Json<T>`",
                None,
            ),
            (
                quote::quote!(#[leakless(seal(adopt(pair(lat = a), stage = "read_plaintext")))] g: Json<G>),
                "pair needs exactly two members",
                None,
            ),
            (
                quote::quote!(#[leakless(seal(adopt(pair(lat = a, lat = b), stage = "read_plaintext")))] g: Json<G>),
                "both `lat`",
                None,
            ),
            (
                quote::quote!(#[leakless(seal(moving(pair(lat = a, lon = b), stage = "read_old")))] g: Json<G>),
                "unknown moving option",
                None,
            ),
            (
                quote::quote!(#[leakless(seal(moving(from = a_old, stage = "later")))] a: String),
                "unknown moving stage",
                Some(MOVE_SYNTAX),
            ),
            (
                quote::quote!(#[leakless(seal(moving(stage = "read_old")))] a: String),
                "moving needs `from`",
                Some(MOVE_SYNTAX),
            ),
            (
                quote::quote!(#[leakless(seal(adopt(from = a_plain, stage = "sealed_only"), moving(from = a_old, stage = "read_old")))] a: String),
                "conflicting options",
                None,
            ),
            (
                quote::quote!(#[leakless(seal)] a: String, #[leakless(seal(column = "a"))] b: String),
                "two sealed fields bind the column name `a`",
                None,
            ),
            (
                quote::quote!(#[leakless(seal(stored_in = b))] a: String, b: String),
                "column `b` is used twice",
                None,
            ),
            (
                quote::quote!(#[leakless(seal(column = ""))] a: String),
                "`column` must not be empty",
                None,
            ),
            (
                quote::quote!(#[leakless(seal(moving(from = b, stage = "read_new")))] a: String, b: i64),
                "column `b` is used twice",
                None,
            ),
        ];
        for (fields, expected, quotes) in cases {
            let input: DeriveInput = syn::parse_quote! {
                #[leakless(table = t, row_id = id, schema_version = 1, scope = "p")]
                struct P { id: i64, #fields }
            };
            let Err(e) = parse(&input) else {
                panic!("accepted: {expected}")
            };
            let msg = e.to_string();
            assert!(msg.contains(expected), "{msg}");
            if let Some(syntax) = quotes {
                assert!(msg.contains(syntax), "{msg}");
            }
        }
    }
}
