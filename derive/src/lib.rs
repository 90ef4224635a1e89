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
//! * for each blind-indexed field `email`: `Patient::email_lookup(&ring, &value)`, the tokens
//!   to match with `patients::email_bidx.eq_any(tokens)`.
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
//!   `normalize` is `none` (default), `trim`, `lowercase` or `trim_lowercase`; `bytes` is 4 to 32
//!   (default 16).
//! * `#[leakless(seal(adopt(from = email_plain, stage = "read_plaintext")))]`: the field is being
//!   adopted from the legacy plaintext column `email_plain` (not a model field; the row gets it
//!   as `Option<String>` for a `String` field, `Option<Vec<u8>>` otherwise, and the sealed
//!   column becomes nullable). Stages: `read_plaintext` (a NULL envelope opens from the
//!   plaintext; writes fill both columns), `write_sealed_only` (reads the same; writes set the
//!   plaintext to NULL), `sealed_only` (the plaintext is ignored; a NULL envelope of a non-`Option`
//!   field is an error). A present envelope always wins. See `docs/operations.md`.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident, LitInt, LitStr, Path, Type, parse_macro_input};

const STRUCT_SYNTAX: &str =
    "#[leakless(table = patients, row_id = id, schema_version = 1, scope = \"patients\")]";

/// Derives `leakless::Sealed` (see the crate docs for what it generates and its attributes).
#[proc_macro_derive(Sealed, attributes(leakless))]
pub fn derive_sealed(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match parse(&input).and_then(|model| expand(&input, &model)) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

enum ScopeAttr {
    Static(LitStr),
    PerTenant { prefix: LitStr, field: Ident },
}

struct BlindIndexAttr {
    column: Ident,
    scope: LitStr,
    /// The variant of `leakless::Normalizer`.
    normalize: Ident,
    bytes: LitInt,
}

/// The spelling of each choice of a string-valued option, with the variant of the runtime enum
/// it names. The attribute parser resolves a string to its variant once, so that the expansion
/// never matches on strings.
const AEADS: &[(&str, &str)] = &[
    ("xchacha20poly1305", "XChaCha20Poly1305"),
    ("aes256gcm", "Aes256Gcm"),
];
const NORMALIZERS: &[(&str, &str)] = &[
    ("none", "None"),
    ("trim", "Trim"),
    ("lowercase", "Lowercase"),
    ("trim_lowercase", "TrimLowercase"),
];

/// The variant named by `v` in `choices`, spanned at `v`, or `help` as the error.
fn choice(v: &LitStr, choices: &[(&str, &str)], help: &str) -> syn::Result<Ident> {
    let value = v.value();
    choices
        .iter()
        .find(|(spelling, _)| *spelling == value)
        .map(|(_, variant)| Ident::new(variant, v.span()))
        .ok_or_else(|| syn::Error::new(v.span(), help))
}

/// An adoption stage (`leakless::manifest::AdoptionStage`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    ReadPlaintext,
    WriteSealedOnly,
    SealedOnly,
}

impl Stage {
    const ALL: [Stage; 3] = [
        Stage::ReadPlaintext,
        Stage::WriteSealedOnly,
        Stage::SealedOnly,
    ];

    /// The spelling in the attribute and the manifest.
    fn spelling(self) -> &'static str {
        match self {
            Stage::ReadPlaintext => "read_plaintext",
            Stage::WriteSealedOnly => "write_sealed_only",
            Stage::SealedOnly => "sealed_only",
        }
    }

    /// The runtime enum's variant.
    fn variant(self) -> Ident {
        let name = match self {
            Stage::ReadPlaintext => "ReadPlaintext",
            Stage::WriteSealedOnly => "WriteSealedOnly",
            Stage::SealedOnly => "SealedOnly",
        };
        Ident::new(name, Span::call_site())
    }
}

/// A field's padding policy (`padding = "default"` or `"marker_only"`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Padding {
    Default,
    MarkerOnly,
}

const ADOPT_SYNTAX: &str = "#[leakless(seal(adopt(from = email_plain, stage = \"read_plaintext\")))] (stages: \
     read_plaintext, write_sealed_only, sealed_only)";

struct AdoptAttr {
    /// The legacy plaintext column.
    from: Ident,
    stage: Stage,
}

struct SealAttr {
    /// The variant of `leakless::Algorithm`.
    aead: Ident,
    padding: Padding,
    blind_index: Option<BlindIndexAttr>,
    adopt: Option<AdoptAttr>,
}

struct FieldModel {
    ident: Ident,
    ty: Type,
    seal: Option<SealAttr>,
    /// `Some(T)` when the field's type is `Option<T>`.
    option_inner: Option<Type>,
}

struct Model {
    table: Path,
    row_id: Ident,
    schema_version: LitInt,
    scope: ScopeAttr,
    fields: Vec<FieldModel>,
}

fn option_inner(ty: &Type) -> Option<Type> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Option" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        syn::GenericArgument::Type(t) if args.args.len() == 1 => Some(t.clone()),
        _ => None,
    }
}

/// Whether a sealed value type is `String` (its legacy plaintext column is then text).
fn is_string(ty: &Type) -> bool {
    let Type::Path(p) = ty else { return false };
    p.path.segments.last().is_some_and(|s| s.ident == "String")
}

fn parse(input: &DeriveInput) -> syn::Result<Model> {
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new(
            input.ident.span(),
            "#[derive(Sealed)] works on structs with named fields",
        ));
    };
    let Fields::Named(named) = &data.fields else {
        return Err(syn::Error::new(
            input.ident.span(),
            "#[derive(Sealed)] works on structs with named fields",
        ));
    };
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new(
            input.generics.span(),
            "#[derive(Sealed)] does not support generic models",
        ));
    }

    let (mut table, mut row_id, mut schema_version) = (None, None, None);
    let (mut scope, mut scope_prefix, mut scope_from) = (None::<LitStr>, None::<LitStr>, None);
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("leakless")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("table") {
                table = Some(meta.value()?.parse::<Path>()?);
            } else if meta.path.is_ident("row_id") {
                row_id = Some(meta.value()?.parse::<Ident>()?);
            } else if meta.path.is_ident("schema_version") {
                schema_version = Some(meta.value()?.parse::<LitInt>()?);
            } else if meta.path.is_ident("scope") {
                scope = Some(meta.value()?.parse::<LitStr>()?);
            } else if meta.path.is_ident("scope_prefix") {
                scope_prefix = Some(meta.value()?.parse::<LitStr>()?);
            } else if meta.path.is_ident("scope_from") {
                scope_from = Some(meta.value()?.parse::<Ident>()?);
            } else {
                return Err(meta.error(format!(
                    "unknown leakless attribute on a model; expected table, row_id, \
                     schema_version, scope, or scope_prefix with scope_from, as in {STRUCT_SYNTAX}"
                )));
            }
            Ok(())
        })?;
    }
    let missing = |what: &str| {
        syn::Error::new(
            input.ident.span(),
            format!("missing `{what}` on the model: write {STRUCT_SYNTAX}"),
        )
    };
    let table = table.ok_or_else(|| missing("table"))?;
    let row_id = row_id.ok_or_else(|| missing("row_id"))?;
    let schema_version = schema_version.ok_or_else(|| missing("schema_version"))?;
    schema_version.base10_parse::<u32>()?;
    let scope = match (scope, scope_prefix, scope_from) {
        (Some(s), None, None) => ScopeAttr::Static(s),
        (None, Some(prefix), Some(field)) => ScopeAttr::PerTenant { prefix, field },
        (None, None, None) => return Err(missing("scope")),
        (Some(s), _, _) => {
            return Err(syn::Error::new(
                s.span(),
                "conflicting options: use either `scope = \"name\"` or \
                 `scope_prefix = \"tenant:\", scope_from = tenant_field`, not both",
            ));
        }
        (None, _, _) => {
            return Err(syn::Error::new(
                input.ident.span(),
                "a per-tenant scope needs both `scope_prefix = \"tenant:\"` and \
                 `scope_from = tenant_field`",
            ));
        }
    };

    let mut fields = Vec::new();
    for f in &named.named {
        let ident = f
            .ident
            .clone()
            .ok_or_else(|| syn::Error::new(f.span(), "named fields only"))?;
        let mut seal = None;
        for attr in f.attrs.iter().filter(|a| a.path().is_ident("leakless")) {
            attr.parse_nested_meta(|meta| {
                if !meta.path.is_ident("seal") {
                    return Err(meta.error(
                        "unknown leakless attribute on a field; expected `seal` or \
                         `seal(aead = \"aes256gcm\", blind_index(column = email_bidx, scope = \"bidx\"))`",
                    ));
                }
                if seal.is_some() {
                    return Err(meta.error("`seal` given twice"));
                }
                let mut s = SealAttr {
                    aead: Ident::new("XChaCha20Poly1305", meta.path.span()),
                    padding: Padding::Default,
                    blind_index: None,
                    adopt: None,
                };
                if meta.input.peek(syn::token::Paren) {
                    meta.parse_nested_meta(|inner| parse_seal_option(&mut s, &inner))?;
                }
                seal = Some(s);
                Ok(())
            })?;
        }
        fields.push(FieldModel {
            option_inner: option_inner(&f.ty),
            ident,
            ty: f.ty.clone(),
            seal,
        });
    }
    validate(input, &row_id, &scope, &fields)?;
    Ok(Model {
        table,
        row_id,
        schema_version,
        scope,
        fields,
    })
}

fn parse_seal_option(s: &mut SealAttr, inner: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<()> {
    if inner.path.is_ident("aead") {
        let v: LitStr = inner.value()?.parse()?;
        s.aead = choice(
            &v,
            AEADS,
            "unknown AEAD: use `aead = \"xchacha20poly1305\"` or `aead = \"aes256gcm\"`",
        )?;
    } else if inner.path.is_ident("padding") {
        let v: LitStr = inner.value()?.parse()?;
        s.padding = match v.value().as_str() {
            "default" => Padding::Default,
            "marker_only" => Padding::MarkerOnly,
            _ => {
                return Err(syn::Error::new(
                    v.span(),
                    "unknown padding: use `padding = \"default\"` or `padding = \"marker_only\"`",
                ));
            }
        };
    } else if inner.path.is_ident("blind_index") {
        let mut column = None;
        let mut scope = None;
        let mut normalize = Ident::new("None", inner.path.span());
        let mut bytes = LitInt::new("16", inner.path.span());
        inner.parse_nested_meta(|b| {
            if b.path.is_ident("column") {
                column = Some(b.value()?.parse::<Ident>()?);
            } else if b.path.is_ident("scope") {
                scope = Some(b.value()?.parse::<LitStr>()?);
            } else if b.path.is_ident("normalize") {
                let v: LitStr = b.value()?.parse()?;
                normalize = choice(
                    &v,
                    NORMALIZERS,
                    "unknown normaliser: use none, trim, lowercase or trim_lowercase",
                )?;
            } else if b.path.is_ident("bytes") {
                let v: LitInt = b.value()?.parse()?;
                let n = v.base10_parse::<u8>()?;
                if !(4..=32).contains(&n) {
                    return Err(syn::Error::new(v.span(), "blind index `bytes` must be 4 to 32"));
                }
                bytes = v;
            } else {
                return Err(b.error(
                    "unknown blind_index option; expected \
                     blind_index(column = email_bidx, scope = \"bidx\", normalize = \"trim_lowercase\", bytes = 16)",
                ));
            }
            Ok(())
        })?;
        let missing = |what: &str| {
            inner.error(format!(
                "blind_index needs `{what}`: write blind_index(column = email_bidx, scope = \"bidx\")"
            ))
        };
        s.blind_index = Some(BlindIndexAttr {
            column: column.ok_or_else(|| missing("column"))?,
            scope: scope.ok_or_else(|| missing("scope"))?,
            normalize,
            bytes,
        });
    } else if inner.path.is_ident("adopt") {
        let (mut from, mut stage) = (None, None);
        inner.parse_nested_meta(|a| {
            if a.path.is_ident("from") {
                from = Some(a.value()?.parse::<Ident>()?);
            } else if a.path.is_ident("stage") {
                let v: LitStr = a.value()?.parse()?;
                let value = v.value();
                stage = Some(
                    Stage::ALL
                        .into_iter()
                        .find(|s| s.spelling() == value)
                        .ok_or_else(|| {
                            syn::Error::new(
                                v.span(),
                                format!("unknown adoption stage; write {ADOPT_SYNTAX}"),
                            )
                        })?,
                );
            } else {
                return Err(a.error(format!("unknown adopt option; write {ADOPT_SYNTAX}")));
            }
            Ok(())
        })?;
        let missing =
            |what: &str| inner.error(format!("adopt needs `{what}`: write {ADOPT_SYNTAX}"));
        s.adopt = Some(AdoptAttr {
            from: from.ok_or_else(|| missing("from"))?,
            stage: stage.ok_or_else(|| missing("stage"))?,
        });
    } else {
        return Err(inner.error(
            "unknown seal option; expected aead = \"...\", padding = \"...\", blind_index(...) \
             or adopt(...)",
        ));
    }
    Ok(())
}

fn validate(
    input: &DeriveInput,
    row_id: &Ident,
    scope: &ScopeAttr,
    fields: &[FieldModel],
) -> syn::Result<()> {
    let find = |name: &Ident| fields.iter().find(|f| &f.ident == name);
    match find(row_id) {
        None => {
            return Err(syn::Error::new(
                row_id.span(),
                format!("`row_id = {row_id}` names no field of {}", input.ident),
            ));
        }
        Some(f) if f.seal.is_some() => {
            return Err(syn::Error::new(
                row_id.span(),
                "conflicting options: the row id cannot be sealed (it is bound into every envelope)",
            ));
        }
        Some(_) => {}
    }
    if let ScopeAttr::PerTenant { field, .. } = scope {
        match find(field) {
            None => {
                return Err(syn::Error::new(
                    field.span(),
                    format!("`scope_from = {field}` names no field of {}", input.ident),
                ));
            }
            Some(f) if f.seal.is_some() => {
                return Err(syn::Error::new(
                    field.span(),
                    "conflicting options: the tenant field cannot be sealed (it picks the key)",
                ));
            }
            Some(_) => {}
        }
    }
    if !fields.iter().any(|f| f.seal.is_some()) {
        return Err(syn::Error::new(
            input.ident.span(),
            "no field is sealed: mark sensitive fields with #[leakless(seal)]",
        ));
    }
    for f in fields {
        if let Some(a) = f.seal.as_ref().and_then(|s| s.adopt.as_ref()) {
            if find(&a.from).is_some() {
                return Err(syn::Error::new(
                    a.from.span(),
                    format!(
                        "adoption source `{}` clashes with a field of the model: the plaintext \
                         column is not a model field, the derive adds it to the row",
                        a.from
                    ),
                ));
            }
            if f.seal.as_ref().is_some_and(|s| s.blind_index.is_some()) {
                return Err(syn::Error::new(
                    a.from.span(),
                    "conflicting options: `adopt` with `blind_index` is not supported (the \
                     adopt backfill does not compute index tokens); add the blind index after \
                     the adoption",
                ));
            }
        }
        if let Some(b) = f.seal.as_ref().and_then(|s| s.blind_index.as_ref())
            && find(&b.column).is_some()
        {
            return Err(syn::Error::new(
                b.column.span(),
                format!(
                    "blind index column `{}` clashes with a field of the model",
                    b.column
                ),
            ));
        }
        if let Type::Reference(r) = &f.ty {
            return Err(syn::Error::new(
                r.span(),
                "unsupported field type: models own their values (use String, not &str)",
            ));
        }
    }
    Ok(())
}

fn table_name(path: &Path) -> syn::Result<String> {
    path.segments
        .last()
        .map(|s| s.ident.to_string())
        .ok_or_else(|| syn::Error::new(path.span(), "empty table path"))
}

fn expand(input: &DeriveInput, m: &Model) -> syn::Result<TokenStream2> {
    let name = &input.ident;
    let vis = &input.vis;
    let row_name = format_ident!("{}Row", name);
    let table_path = &m.table;
    let table = table_name(&m.table)?;
    let row_id = &m.row_id;
    let version = &m.schema_version;
    let p = quote!(::leakless::__private);

    // The row's key scope, from the model (`self`, when sealing) or from the loaded row
    // (`row`, when opening: every envelope must name this scope).
    let scope_of = |from: TokenStream2| match &m.scope {
        ScopeAttr::Static(s) => quote!(#p::scope(#s, ::core::option::Option::None)?),
        ScopeAttr::PerTenant { prefix, field } => quote!(#p::scope(
            #prefix,
            ::core::option::Option::Some(&#from.#field as &dyn ::core::fmt::Display)
        )?),
    };
    let scope_expr = scope_of(quote!(self));
    let open_scope_expr = scope_of(quote!(row));
    let (scope_manifest, scope_kind) = match &m.scope {
        ScopeAttr::Static(s) => (
            quote!(#p::ScopeSource::Static { scope: ::std::string::String::from(#s) }),
            "static",
        ),
        ScopeAttr::PerTenant { prefix, field } => {
            let column = field.to_string();
            (
                quote!(#p::ScopeSource::PerTenant {
                    column: ::std::string::String::from(#column),
                    prefix: ::std::string::String::from(#prefix),
                }),
                "per-tenant",
            )
        }
    };

    let mut row_fields = Vec::new();
    let mut seal_inits = Vec::new();
    let mut open_lets = Vec::new();
    let mut open_inits = Vec::new();
    let mut debug_fields = Vec::new();
    let mut manifest_columns = Vec::new();
    let mut lookups = Vec::new();
    let mut row_debug = Vec::new();
    let mut any_adopt = false;
    let row_id_ty = m
        .fields
        .iter()
        .find(|f| &f.ident == row_id)
        .map(|f| f.ty.clone())
        .ok_or_else(|| syn::Error::new(row_id.span(), "row id field not found"))?;

    for f in &m.fields {
        let ident = &f.ident;
        let ty = &f.ty;
        let column = ident.to_string();
        let doc_plain = format!("`{column}`, stored as it is (not sealed).");
        let Some(seal) = &f.seal else {
            row_fields.push(quote!(#[doc = #doc_plain] pub #ident: #ty));
            row_debug.push(quote!(.field(#column, &self.#ident)));
            seal_inits.push(quote!(#ident: ::core::clone::Clone::clone(&self.#ident)));
            open_inits.push(quote!(#ident: row.#ident));
            debug_fields.push(quote!(.field(#column, &self.#ident)));
            continue;
        };
        let aead = &seal.aead;
        let alg = quote!(#p::Algorithm::#aead);
        let padding = match seal.padding {
            Padding::MarkerOnly => quote!(#p::PaddingPolicy::MarkerOnly),
            Padding::Default => quote!(<#p::PaddingPolicy as ::core::default::Default>::default()),
        };
        let policy = quote!(#p::FieldPolicy { algorithm: #alg, padding: #padding });
        let value_ty = f.option_inner.clone().unwrap_or_else(|| ty.clone());
        let adopt = seal.adopt.as_ref();
        let stored_ty = if f.option_inner.is_some() || adopt.is_some() {
            quote!(::core::option::Option<::std::vec::Vec<u8>>)
        } else {
            quote!(::std::vec::Vec<u8>)
        };
        let doc_sealed = format!("`{column}`, sealed: a leakless envelope.");
        row_fields.push(quote!(#[doc = #doc_sealed] pub #ident: #stored_ty));
        row_debug.push(quote!(.field(#column, &self.#ident)));
        let seal_one = |v: TokenStream2| {
            quote!(#p::seal_field::<#value_ty>(
                ring, &__scope, #table, #column, __row, #version, #v, &#policy,
            )?)
        };
        let open_one = |e: TokenStream2| quote!(#p::open_field::<#value_ty>(ring, &__scope, #table, #column, __row, #version, #e)?);
        let local = format_ident!("__open_{}", ident);
        if let Some(a) = adopt {
            any_adopt = true;
            let from = &a.from;
            let from_name = from.to_string();
            let stage = a.stage.spelling();
            let text = is_string(&value_ty);
            let plain_ty = if text {
                quote!(::core::option::Option<::std::string::String>)
            } else {
                quote!(::core::option::Option<::std::vec::Vec<u8>>)
            };
            let doc_from = format!(
                "`{from_name}`, the legacy plaintext column `{column}` is adopted from \
                 (stage `{stage}`)."
            );
            row_fields.push(quote!(#[doc = #doc_from] pub #from: #plain_ty));
            row_debug.push(quote!(.field(#from_name, &::core::format_args!("<plaintext>"))));
            let copy_fn = if text {
                format_ident!("plaintext_text")
            } else {
                format_ident!("plaintext_bytes")
            };
            let keep_plain = a.stage == Stage::ReadPlaintext;
            let reads = a.stage != Stage::SealedOnly;
            let none = quote!(::core::option::Option::None);
            if f.option_inner.is_some() {
                let s = seal_one(quote!(v));
                seal_inits.push(quote!(#ident: match &self.#ident {
                    ::core::option::Option::Some(v) => ::core::option::Option::Some(#s),
                    ::core::option::Option::None => ::core::option::Option::None,
                }));
                seal_inits.push(if keep_plain {
                    quote!(#from: match &self.#ident {
                        ::core::option::Option::Some(v) =>
                            ::core::option::Option::Some(#p::#copy_fn::<#value_ty>(v)?),
                        ::core::option::Option::None => ::core::option::Option::None,
                    })
                } else {
                    quote!(#from: #none)
                });
            } else {
                let s = seal_one(quote!(&self.#ident));
                seal_inits.push(quote!(#ident: ::core::option::Option::Some(#s)));
                seal_inits.push(if keep_plain {
                    quote!(#from: ::core::option::Option::Some(
                        #p::#copy_fn::<#value_ty>(&self.#ident)?))
                } else {
                    quote!(#from: #none)
                });
            }
            let plain_bytes = if text {
                quote!(row.#from.map(::std::string::String::into_bytes))
            } else {
                quote!(row.#from)
            };
            let opened = quote!(#p::open_adopting::<#value_ty>(
                ring, &__scope, #table, #column, __row, #version, row.#ident.as_deref(), #plain_bytes, #reads,
            )?);
            if f.option_inner.is_some() {
                open_lets.push(quote!(let #local = #opened;));
            } else {
                open_lets.push(quote!(let #local = match #opened {
                    ::core::option::Option::Some(v) => v,
                    ::core::option::Option::None => return ::core::result::Result::Err(
                        #p::not_backfilled(#table, #column, __row, #stage)),
                };));
            }
        } else if f.option_inner.is_some() {
            let s = seal_one(quote!(v));
            seal_inits.push(quote!(#ident: match &self.#ident {
                ::core::option::Option::Some(v) => ::core::option::Option::Some(#s),
                ::core::option::Option::None => ::core::option::Option::None,
            }));
            let o = open_one(quote!(e));
            open_lets.push(quote!(let #local = match &row.#ident {
                ::core::option::Option::Some(e) => ::core::option::Option::Some(#o),
                ::core::option::Option::None => ::core::option::Option::None,
            };));
        } else {
            let s = seal_one(quote!(&self.#ident));
            seal_inits.push(quote!(#ident: #s));
            let o = open_one(quote!(&row.#ident));
            open_lets.push(quote!(let #local = #o;));
        }
        open_inits.push(quote!(#ident: #local));
        debug_fields.push(quote!(.field(#column, &::core::format_args!("<sealed>"))));

        let (bidx_manifest, bidx) = match &seal.blind_index {
            None => (quote!(::core::option::Option::None), None),
            Some(b) => {
                let bcol = &b.column;
                let bcol_name = bcol.to_string();
                let bscope = &b.scope;
                let bytes = &b.bytes;
                let norm = &b.normalize;
                let normalizer = quote!(#p::Normalizer::#norm);
                let spec_fn = format_ident!("__leakless_{}_index_spec", ident);
                let lookup_fn = format_ident!("{}_lookup", ident);
                let doc_b = format!("Blind index of `{column}` (HMAC tokens, no plaintext).");
                row_fields.push(quote!(#[doc = #doc_b] pub #bcol: #stored_ty));
                row_debug.push(quote!(.field(#bcol_name, &self.#bcol)));
                let doc_lookup = format!(
                    "The blind-index tokens to find rows whose `{column}` equals `value`: match \
                     them with `{table}::{bcol_name}.eq_any(tokens)`."
                );
                lookups.push(quote! {
                    #[doc(hidden)]
                    fn #spec_fn() -> ::core::result::Result<#p::BlindIndexSpec, #p::Error> {
                        let mut spec = #p::BlindIndexSpec::new(#table, #column, #p::KeyScope::new(#bscope)?);
                        spec.bytes = #bytes;
                        spec.normalizer = #normalizer;
                        ::core::result::Result::Ok(spec)
                    }
                    #[doc = #doc_lookup]
                    ///
                    /// # Errors
                    /// The key errors of the index-key scope, or an encoding error.
                    #vis fn #lookup_fn(
                        ring: &#p::KeyRing,
                        value: &#value_ty,
                    ) -> ::core::result::Result<::std::vec::Vec<::std::vec::Vec<u8>>, #p::Error> {
                        #p::blind_index_candidates(ring, &Self::#spec_fn()?, value)
                    }
                });
                let init = if f.option_inner.is_some() {
                    quote!(#bcol: match &self.#ident {
                        ::core::option::Option::Some(v) => ::core::option::Option::Some(
                            #p::blind_index(ring, &Self::#spec_fn()?, v)?),
                        ::core::option::Option::None => ::core::option::Option::None,
                    })
                } else {
                    quote!(#bcol: #p::blind_index(ring, &Self::#spec_fn()?, &self.#ident)?)
                };
                (
                    quote!(::core::option::Option::Some(#p::BlindIndexColumn {
                        column: ::std::string::String::from(#bcol_name),
                        scope: ::std::string::String::from(#bscope),
                        bytes: #bytes,
                        normalizer: #normalizer,
                    })),
                    Some(init),
                )
            }
        };
        if let Some(init) = bidx {
            seal_inits.push(init);
        }
        let nullable = f.option_inner.is_some();
        let adoption_manifest = match adopt {
            None => quote!(::core::option::Option::None),
            Some(a) => {
                let from_name = a.from.to_string();
                let stage = a.stage.variant();
                quote!(::core::option::Option::Some(#p::AdoptionColumn {
                    from_column: ::std::string::String::from(#from_name),
                    stage: #p::AdoptionStage::#stage,
                }))
            }
        };
        manifest_columns.push(quote!(#p::SealedColumn {
            column: ::std::string::String::from(#column),
            algorithm: #alg,
            encoding: <#value_ty as #p::Sealable>::ENCODING,
            padding: #padding,
            nullable: #nullable,
            blind_index: #bidx_manifest,
            adoption: #adoption_manifest,
        }));
    }

    let row_doc = format!(
        "The stored form of [`{name}`]: sealed fields as leakless envelopes ({scope_kind} key \
         scope). Generated by `#[derive(Sealed)]`; build it with `Sealed::seal_row`."
    );
    let span = Span::call_site();
    let ring = Ident::new("ring", span);
    // A row with a legacy plaintext column gets a Debug that redacts it.
    let (row_derive_debug, row_debug_impl) = if any_adopt {
        (
            quote!(),
            quote! {
                impl ::core::fmt::Debug for #row_name {
                    fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                        f.debug_struct(::core::stringify!(#row_name))
                            #(#row_debug)*
                            .finish()
                    }
                }
            },
        )
    } else {
        (quote!(::core::fmt::Debug,), quote!())
    };
    Ok(quote! {
        #[doc = #row_doc]
        #[derive(::core::clone::Clone, #row_derive_debug
                 ::diesel::Queryable, ::diesel::Selectable, ::diesel::Insertable, ::diesel::AsChangeset)]
        #[diesel(table_name = #table_path)]
        #[diesel(primary_key(#row_id))]
        #[diesel(treat_none_as_null = true)]
        #vis struct #row_name {
            #(#row_fields,)*
        }

        #row_debug_impl

        impl #p::Sealed for #name {
            type Row = #row_name;

            fn seal_row(&self, #ring: &#p::KeyRing) -> ::core::result::Result<#row_name, #p::Error> {
                let __scope = #scope_expr;
                let __row = #p::AsRowId::row_id(&self.#row_id);
                ::core::result::Result::Ok(#row_name {
                    #(#seal_inits,)*
                })
            }

            fn open_row(row: #row_name, #ring: &#p::KeyRing) -> ::core::result::Result<Self, #p::Error> {
                let __scope = #open_scope_expr;
                let __row = #p::AsRowId::row_id(&row.#row_id);
                #(#open_lets)*
                ::core::result::Result::Ok(Self {
                    #(#open_inits,)*
                })
            }

            fn manifest() -> #p::SealedTable {
                #p::SealedTable {
                    table: ::std::string::String::from(#table),
                    row_id_column: ::std::string::String::from(::core::stringify!(#row_id)),
                    row_id_kind: <#row_id_ty as #p::AsRowId>::KIND,
                    schema_version: #version,
                    scope: #scope_manifest,
                    columns: ::std::vec![#(#manifest_columns),*],
                }
            }
        }

        impl #name {
            #(#lookups)*
        }

        impl ::core::fmt::Debug for #name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(::core::stringify!(#name))
                    #(#debug_fields)*
                    .finish()
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_str(input: DeriveInput) -> String {
        let tokens = parse(&input)
            .and_then(|m| expand(&input, &m))
            .unwrap_or_else(|e| e.to_compile_error());
        prettyplease::unparse(&syn::parse2(tokens).unwrap())
    }

    /// The whole expansion for a model with every kind of field, as a reviewed snapshot.
    #[test]
    fn expansion_snapshot() {
        let input: DeriveInput = syn::parse_quote! {
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
        };
        insta::assert_snapshot!(expand_str(input));
    }

    /// A model adopting two plaintext columns (text and binary, stages 1 and 3): extra
    /// plaintext columns in the row, a redacting row `Debug`, and the manifest's adoption.
    #[test]
    fn adoption_expansion_snapshot() {
        let input: DeriveInput = syn::parse_quote! {
            #[leakless(table = people, row_id = id, schema_version = 1, scope = "people")]
            pub struct Person {
                id: i64,
                #[leakless(seal(adopt(from = address_plain, stage = "read_plaintext")))]
                address: String,
                #[leakless(seal(adopt(from = photo_plain, stage = "sealed_only")))]
                photo: Option<Vec<u8>>,
            }
        };
        insta::assert_snapshot!(expand_str(input));
    }

    /// Bad `adopt` attributes are compile errors quoting the right syntax.
    #[test]
    fn bad_adopt_attributes_are_rejected() {
        let cases: [(DeriveInput, &str); 4] = [
            (
                syn::parse_quote! {
                    #[leakless(table = people, row_id = id, schema_version = 1, scope = "p")]
                    struct P { id: i64, #[leakless(seal(adopt(from = a_plain, stage = "later")))] a: String }
                },
                "unknown adoption stage",
            ),
            (
                syn::parse_quote! {
                    #[leakless(table = people, row_id = id, schema_version = 1, scope = "p")]
                    struct P { id: i64, #[leakless(seal(adopt(stage = "sealed_only")))] a: String }
                },
                "adopt needs `from`",
            ),
            (
                syn::parse_quote! {
                    #[leakless(table = people, row_id = id, schema_version = 1, scope = "p")]
                    struct P { id: i64, #[leakless(seal(adopt(from = id, stage = "sealed_only")))] a: String }
                },
                "clashes with a field",
            ),
            (
                syn::parse_quote! {
                    #[leakless(table = people, row_id = id, schema_version = 1, scope = "p")]
                    struct P {
                        id: i64,
                        #[leakless(seal(adopt(from = a_plain, stage = "sealed_only"),
                                        blind_index(column = a_bidx, scope = "bidx")))]
                        a: String,
                    }
                },
                "`adopt` with `blind_index` is not supported",
            ),
        ];
        for (input, expected) in cases {
            let Err(e) = parse(&input) else {
                panic!("accepted: {expected}")
            };
            let msg = e.to_string();
            assert!(msg.contains(expected), "{msg}");
            if expected.starts_with("unknown") || expected.starts_with("adopt needs") {
                assert!(msg.contains(ADOPT_SYNTAX), "{msg}");
            }
        }
    }
}
