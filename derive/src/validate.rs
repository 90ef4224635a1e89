//! The checks of a parsed model that need the whole struct (row id and tenant fields exist,
//! column names do not clash), each reported at the span that is wrong.

use syn::spanned::Spanned;
use syn::{DeriveInput, Ident, Type};

use crate::attr::{FieldModel, ScopeAttr};

pub(crate) fn validate(
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
        if let Some(a) = f.seal.as_ref().and_then(|s| s.adopt.as_ref())
            && find(&a.from).is_some()
        {
            return Err(syn::Error::new(
                a.from.span(),
                format!(
                    "adoption source `{}` clashes with a field of the model: the plaintext \
                     column is not a model field, the derive adds it to the row",
                    a.from
                ),
            ));
        }
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
        if let Type::Reference(r) = &f.ty {
            return Err(syn::Error::new(
                r.span(),
                "unsupported field type: models own their values (use String, not &str)",
            ));
        }
    }
    Ok(())
}
