//! The derive's attributes: `#[leakless(...)]` on the struct and `#[leakless(seal(...))]` on
//! fields, parsed into a [`Model`] with every string option resolved to what it names.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident, LitInt, LitStr, Path, Type};

use crate::validate::validate;

pub(crate) const STRUCT_SYNTAX: &str =
    "#[leakless(table = patients, row_id = id, schema_version = 1, scope = \"patients\")]";

pub(crate) enum ScopeAttr {
    Static(LitStr),
    PerTenant { prefix: LitStr, field: Ident },
}

pub(crate) struct BlindIndexAttr {
    pub(crate) column: Ident,
    /// The index key scope, or with `per_tenant` its prefix (the scope is the prefix followed
    /// by the row's tenant, as for the model's own per-tenant scope).
    pub(crate) scope: LitStr,
    pub(crate) per_tenant: bool,
    /// The variant of `leakless::Normalizer`.
    pub(crate) normalize: Ident,
    pub(crate) bytes: LitInt,
}

/// The spelling of each choice of a string-valued option, with the variant of the runtime enum
/// it names. The attribute parser resolves a string to its variant once, so that the expansion
/// never matches on strings.
pub(crate) const AEADS: &[(&str, &str)] = &[
    ("xchacha20poly1305", "XChaCha20Poly1305"),
    ("aes256gcm", "Aes256Gcm"),
];
pub(crate) const NORMALIZERS: &[(&str, &str)] = &[
    ("none", "None"),
    ("trim", "Trim"),
    ("lowercase", "Lowercase"),
    ("trim_lowercase", "TrimLowercase"),
    ("nfc", "Nfc"),
    ("nfkc_casefold", "NfkcCasefold"),
];

/// The variant named by `v` in `choices`, spanned at `v`, or `help` as the error.
pub(crate) fn choice(v: &LitStr, choices: &[(&str, &str)], help: &str) -> syn::Result<Ident> {
    let value = v.value();
    choices
        .iter()
        .find(|(spelling, _)| *spelling == value)
        .map(|(_, variant)| Ident::new(variant, v.span()))
        .ok_or_else(|| syn::Error::new(v.span(), help))
}

/// An adoption stage (`leakless::manifest::AdoptionStage`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
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
    pub(crate) fn spelling(self) -> &'static str {
        match self {
            Stage::ReadPlaintext => "read_plaintext",
            Stage::WriteSealedOnly => "write_sealed_only",
            Stage::SealedOnly => "sealed_only",
        }
    }

    /// The runtime enum's variant.
    pub(crate) fn variant(self) -> Ident {
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
pub(crate) enum Padding {
    Default,
    MarkerOnly,
}

pub(crate) const ADOPT_SYNTAX: &str = "#[leakless(seal(adopt(from = email_plain, stage = \"read_plaintext\")))] (stages: \
     read_plaintext, write_sealed_only, sealed_only)";

pub(crate) const ADOPT_PAIR_SYNTAX: &str = "#[leakless(seal(adopt(pair(lat = gps_lat, lon = gps_lon), stage = \"read_plaintext\")))] \
     on a `Json<T>` field whose JSON has the two numeric members";

pub(crate) const MOVE_SYNTAX: &str = "#[leakless(seal(moving(from = email_sealed, stage = \"read_old\")))] (stages: \
     read_old, read_new)";

/// A sealed field whose envelopes move from the column `from` into its own column. Both
/// stages write the same envelope into both columns; `read_old` reads `from` first (while a
/// build writing only `from` may still run), `read_new` reads the field's column first (once
/// `leakless-migrate copy` made the two agree).
pub(crate) struct MoveAttr {
    pub(crate) from: Ident,
    /// `true` for `read_new`.
    pub(crate) read_new: bool,
}

pub(crate) struct AdoptAttr {
    /// The legacy plaintext column (of a pair, the first).
    pub(crate) from: Ident,
    pub(crate) stage: Stage,
    /// `pair(k0 = col0, k1 = col1)`: the value is the JSON object of two numeric columns;
    /// `(key, column)` each, `from` being the first column.
    pub(crate) pair: Option<[(Ident, Ident); 2]>,
}

impl AdoptAttr {
    /// Every legacy column: `from`, and a pair's second.
    pub(crate) fn columns(&self) -> Vec<&Ident> {
        std::iter::once(&self.from)
            .chain(self.pair.as_ref().map(|[_, (_, c)]| c))
            .collect()
    }
}

pub(crate) struct SealAttr {
    /// The variant of `leakless::Algorithm`.
    pub(crate) aead: Ident,
    pub(crate) padding: Padding,
    pub(crate) blind_index: Option<BlindIndexAttr>,
    pub(crate) adopt: Option<AdoptAttr>,
    /// `column = "name"`: the column name bound into the envelopes (default: the field name).
    pub(crate) column: Option<LitStr>,
    /// `stored_in = col`: the table column that holds the envelopes (default: the field name).
    pub(crate) stored_in: Option<Ident>,
    /// `moving(from = col, stage = ...)`: the envelopes are moving out of `col` into the
    /// field's column.
    pub(crate) moving: Option<MoveAttr>,
}

impl SealAttr {
    /// The name bound into every envelope of `field` (and into its blind-index key).
    pub(crate) fn bound_name(&self, field: &Ident) -> String {
        self.column
            .as_ref()
            .map_or_else(|| field.to_string(), LitStr::value)
    }

    /// The table column holding the envelopes of `field`.
    pub(crate) fn stored_column<'a>(&'a self, field: &'a Ident) -> &'a Ident {
        self.stored_in.as_ref().unwrap_or(field)
    }
}

/// The row's field for the legacy plaintext column `from` of an adopted field: `from` itself,
/// or `<from>_plaintext` where a model field already has that name (a field adopted from the
/// column of its own name, stored elsewhere with `stored_in`).
pub(crate) fn legacy_ident(from: &Ident, fields: &[FieldModel]) -> Ident {
    if fields.iter().any(|f| &f.ident == from) {
        Ident::new(&format!("{from}_plaintext"), from.span())
    } else {
        from.clone()
    }
}

pub(crate) struct FieldModel {
    pub(crate) ident: Ident,
    pub(crate) ty: Type,
    pub(crate) seal: Option<SealAttr>,
    /// `Some(T)` when the field's type is `Option<T>`.
    pub(crate) option_inner: Option<Type>,
}

pub(crate) struct Model {
    pub(crate) table: Path,
    pub(crate) row_id: Ident,
    pub(crate) schema_version: LitInt,
    pub(crate) scope: ScopeAttr,
    pub(crate) fields: Vec<FieldModel>,
}

pub(crate) fn option_inner(ty: &Type) -> Option<Type> {
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
pub(crate) fn is_string(ty: &Type) -> bool {
    let Type::Path(p) = ty else { return false };
    p.path.segments.last().is_some_and(|s| s.ident == "String")
}

pub(crate) fn parse(input: &DeriveInput) -> syn::Result<Model> {
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
                    column: None,
                    stored_in: None,
                    moving: None,
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

/// The source of `adopt(...)`/`moving(...)`: `from = column`, or (adopt only)
/// `pair(k0 = column0, k1 = column1)`.
enum Source {
    Column(Ident),
    Pair([(Ident, Ident); 2]),
}

/// Parses `option(from = column, stage = "...")` (`adopt`, `moving`; `adopt` also takes
/// `pair(k0 = col0, k1 = col1)` for `from`): the source and the stage `stage_of` reads from its
/// spelling; every error names `noun` and quotes `syntax`.
fn parse_from_stage<T>(
    inner: &syn::meta::ParseNestedMeta<'_>,
    option: &str,
    noun: &str,
    syntax: &str,
    stage_of: impl Fn(&str) -> Option<T>,
) -> syn::Result<(Source, T)> {
    let (mut from, mut stage) = (None, None);
    inner.parse_nested_meta(|a| {
        if a.path.is_ident("from") {
            from = Some(Source::Column(a.value()?.parse::<Ident>()?));
        } else if a.path.is_ident("pair") && option == "adopt" {
            let mut members = Vec::new();
            a.parse_nested_meta(|m| {
                let key = m.path.require_ident()?.clone();
                members.push((key, m.value()?.parse::<Ident>()?));
                Ok(())
            })?;
            let Ok(pair) = <[(Ident, Ident); 2]>::try_from(members) else {
                return Err(a.error(format!(
                    "pair needs exactly two members: write {ADOPT_PAIR_SYNTAX}"
                )));
            };
            from = Some(Source::Pair(pair));
        } else if a.path.is_ident("stage") {
            let v: LitStr = a.value()?.parse()?;
            stage = Some(stage_of(&v.value()).ok_or_else(|| {
                syn::Error::new(v.span(), format!("unknown {noun} stage; write {syntax}"))
            })?);
        } else {
            return Err(a.error(format!("unknown {option} option; write {syntax}")));
        }
        Ok(())
    })?;
    let missing = |what: &str| inner.error(format!("{option} needs `{what}`: write {syntax}"));
    Ok((
        from.ok_or_else(|| missing("from"))?,
        stage.ok_or_else(|| missing("stage"))?,
    ))
}

pub(crate) fn parse_seal_option(
    s: &mut SealAttr,
    inner: &syn::meta::ParseNestedMeta<'_>,
) -> syn::Result<()> {
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
        let mut prefix = None;
        let mut normalize = Ident::new("None", inner.path.span());
        let mut bytes = LitInt::new("16", inner.path.span());
        inner.parse_nested_meta(|b| {
            if b.path.is_ident("column") {
                column = Some(b.value()?.parse::<Ident>()?);
            } else if b.path.is_ident("scope") {
                scope = Some(b.value()?.parse::<LitStr>()?);
            } else if b.path.is_ident("scope_prefix") {
                prefix = Some(b.value()?.parse::<LitStr>()?);
            } else if b.path.is_ident("normalize") {
                let v: LitStr = b.value()?.parse()?;
                normalize = choice(
                    &v,
                    NORMALIZERS,
                    "unknown normaliser: use none, trim, lowercase, trim_lowercase, nfc or nfkc_casefold",
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
                     blind_index(column = email_bidx, scope = \"bidx\", normalize = \"trim_lowercase\", bytes = 16) \
                     (or scope_prefix = \"bidx:\" instead of scope, for an index key per tenant)",
                ));
            }
            Ok(())
        })?;
        let missing = |what: &str| {
            inner.error(format!(
                "blind_index needs `{what}`: write blind_index(column = email_bidx, scope = \"bidx\")"
            ))
        };
        let (scope, per_tenant) = match (scope, prefix) {
            (Some(s), None) => (s, false),
            (None, Some(p)) => (p, true),
            (Some(s), Some(_)) => {
                return Err(syn::Error::new(
                    s.span(),
                    "conflicting options: blind_index takes `scope` (one index key) or \
                     `scope_prefix` (an index key per tenant), not both",
                ));
            }
            (None, None) => return Err(missing("scope")),
        };
        s.blind_index = Some(BlindIndexAttr {
            column: column.ok_or_else(|| missing("column"))?,
            scope,
            per_tenant,
            normalize,
            bytes,
        });
    } else if inner.path.is_ident("adopt") {
        let (source, stage) = parse_from_stage(inner, "adopt", "adoption", ADOPT_SYNTAX, |v| {
            Stage::ALL.into_iter().find(|s| s.spelling() == v)
        })?;
        s.adopt = Some(match source {
            Source::Column(from) => AdoptAttr {
                from,
                stage,
                pair: None,
            },
            Source::Pair(pair) => AdoptAttr {
                from: pair[0].1.clone(),
                stage,
                pair: Some(pair),
            },
        });
    } else if inner.path.is_ident("column") {
        let v: LitStr = inner.value()?.parse()?;
        if v.value().is_empty() {
            return Err(syn::Error::new(v.span(), "`column` must not be empty"));
        }
        s.column = Some(v);
    } else if inner.path.is_ident("stored_in") {
        s.stored_in = Some(inner.value()?.parse::<Ident>()?);
    } else if inner.path.is_ident("moving") {
        let (source, read_new) =
            parse_from_stage(inner, "moving", "moving", MOVE_SYNTAX, |v| match v {
                "read_old" => Some(false),
                "read_new" => Some(true),
                _ => None,
            })?;
        let Source::Column(from) = source else {
            return Err(inner.error(format!("moving takes one column: write {MOVE_SYNTAX}")));
        };
        s.moving = Some(MoveAttr { from, read_new });
    } else {
        return Err(inner.error(
            "unknown seal option; expected aead = \"...\", padding = \"...\", blind_index(...), \
             adopt(...), column = \"...\", stored_in = col or moving(...)",
        ));
    }
    Ok(())
}
