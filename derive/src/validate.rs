//! The checks of a parsed model that need the whole struct (row id and tenant fields exist,
//! column names do not clash), each reported at the span that is wrong.

use syn::spanned::Spanned;
use syn::{DeriveInput, Ident, LitStr, Type};

use crate::attr::{ADOPT_PAIR_SYNTAX, FieldModel, ScopeAttr, legacy_ident};

pub(crate) fn validate(
    input: &DeriveInput,
    row_id: &Ident,
    scope: &ScopeAttr,
    fields: &[FieldModel],
) -> syn::Result<()> {
    let find = |name: &Ident| fields.iter().find(|f| &f.ident == name);
    unsealed_field(
        input,
        fields,
        "row_id",
        row_id,
        "conflicting options: the row id cannot be sealed (it is bound into every envelope)",
    )?;
    if let ScopeAttr::PerTenant { field, .. } = scope {
        unsealed_field(
            input,
            fields,
            "scope_from",
            field,
            "conflicting options: the tenant field cannot be sealed (it picks the key)",
        )?;
    }
    if !fields.iter().any(|f| f.seal.is_some()) {
        return Err(syn::Error::new(
            input.ident.span(),
            "no field is sealed: mark sensitive fields with #[leakless(seal)]",
        ));
    }
    check_columns(fields)?;
    for f in fields {
        if let Some(b) = f.seal.as_ref().and_then(|s| s.blind_index.as_ref())
            && b.per_tenant
            && !matches!(scope, ScopeAttr::PerTenant { .. })
        {
            return Err(syn::Error::new(
                b.scope.span(),
                "blind_index `scope_prefix` needs a per-tenant model: the index scope is the \
                 prefix followed by the row's tenant (`scope_prefix = \"...\", scope_from = \
                 tenant_field` on the struct); use `scope = \"bidx\"` for one index key",
            ));
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
        if let Some(s) = &f.seal
            && let (Some(a), Some(m)) = (&s.adopt, &s.moving)
        {
            return Err(syn::Error::new(
                m.from.span(),
                format!(
                    "conflicting options: `moving` moves envelopes between columns, `adopt` \
                     seals plaintext from `{}`; finish the adoption first",
                    a.from
                ),
            ));
        }
        if let Some([(k0, _), (k1, _)]) = f
            .seal
            .as_ref()
            .and_then(|s| s.adopt.as_ref())
            .and_then(|a| a.pair.as_ref())
        {
            let value_ty = f.option_inner.as_ref().unwrap_or(&f.ty);
            let json = matches!(value_ty, Type::Path(p)
                if p.path.segments.last().is_some_and(|s| s.ident == "Json"));
            if !json {
                return Err(syn::Error::new(
                    k0.span(),
                    format!(
                        "adopt(pair(...)) seals the JSON object of two numeric columns: the \
                         field must be `Json<T>` (or `Option<Json<T>>`); write {ADOPT_PAIR_SYNTAX}"
                    ),
                ));
            }
            if k0 == k1 {
                return Err(syn::Error::new(
                    k1.span(),
                    format!("the pair's two keys are both `{k0}`"),
                ));
            }
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

/// Checks that the option `option = name` names a field of the struct and that the field is
/// not sealed; `if_sealed` is the error when it is.
fn unsealed_field(
    input: &DeriveInput,
    fields: &[FieldModel],
    option: &str,
    name: &Ident,
    if_sealed: &str,
) -> syn::Result<()> {
    match fields.iter().find(|f| &f.ident == name) {
        None => Err(syn::Error::new(
            name.span(),
            format!("`{option} = {name}` names no field of {}", input.ident),
        )),
        Some(f) if f.seal.is_some() => Err(syn::Error::new(name.span(), if_sealed)),
        Some(_) => Ok(()),
    }
}

/// Every table column the row reads and writes appears once, every field of the generated row
/// once, and no two sealed fields bind the same name into their envelopes (a value could then
/// be moved from one field into the other and still open).
fn check_columns(fields: &[FieldModel]) -> syn::Result<()> {
    let mut columns: Vec<(String, &str)> = Vec::new();
    let mut row_fields: Vec<String> = Vec::new();
    let mut bound: Vec<String> = Vec::new();
    let mut take = |column: &Ident, row_field: &Ident, what: &'static str| -> syn::Result<()> {
        let name = column.to_string();
        if let Some((_, other)) = columns.iter().find(|(c, _)| *c == name) {
            return Err(syn::Error::new(
                column.span(),
                format!("column `{name}` is used twice: as {other} and as {what}"),
            ));
        }
        let field = row_field.to_string();
        if row_fields.contains(&field) {
            return Err(syn::Error::new(
                row_field.span(),
                format!(
                    "the generated row would have two fields named `{field}` ({what}); rename \
                     one of the model's fields"
                ),
            ));
        }
        columns.push((name, what));
        row_fields.push(field);
        Ok(())
    };
    for f in fields {
        let Some(s) = &f.seal else {
            take(&f.ident, &f.ident, "a plain field")?;
            continue;
        };
        take(
            s.stored_column(&f.ident),
            &f.ident,
            "a sealed field's column",
        )?;
        if let Some(a) = &s.adopt {
            for c in a.columns() {
                take(
                    c,
                    &legacy_ident(c, fields),
                    "an adoption's plaintext column",
                )?;
            }
        }
        if let Some(m) = &s.moving {
            take(&m.from, &m.from, "the column envelopes move from")?;
        }
        if let Some(b) = &s.blind_index {
            take(&b.column, &b.column, "a blind index column")?;
        }
        let name = s.bound_name(&f.ident);
        if bound.contains(&name) {
            let span = s
                .column
                .as_ref()
                .map_or_else(|| f.ident.span(), LitStr::span);
            return Err(syn::Error::new(
                span,
                format!(
                    "two sealed fields bind the column name `{name}` into their envelopes; \
                     give one its own with `column = \"...\"`"
                ),
            ));
        }
        bound.push(name);
    }
    Ok(())
}
