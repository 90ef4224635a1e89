//! The expansion: the stored row type, the `Sealed` implementation, the blind-index look-ups
//! and the manifest entry of a parsed [`Model`](crate::attr::Model).

use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{DeriveInput, Ident, Path};

use crate::attr::{Model, Padding, ScopeAttr, Stage, is_string, legacy_ident};

pub(crate) fn table_name(path: &Path) -> syn::Result<String> {
    path.segments
        .last()
        .map(|s| s.ident.to_string())
        .ok_or_else(|| syn::Error::new(path.span(), "empty table path"))
}

pub(crate) fn expand(input: &DeriveInput, m: &Model) -> syn::Result<TokenStream2> {
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
    let mut seal_lets = Vec::new();
    let mut open_inits = Vec::new();
    // Row fields that hold envelopes or blind-index tokens: once opened, handed to the caller's
    // `SpentBuffers` (see `Sealed::open_rows`).
    let mut spent_fields: Vec<Ident> = Vec::new();
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
        // The name bound into the envelopes, and the table column that holds them.
        let bound = seal.bound_name(ident);
        let stored = seal.stored_column(ident);
        let stored_name = stored.to_string();
        let column_attr = |row_field: &Ident, column: &Ident| {
            if row_field == column {
                quote!()
            } else {
                quote!(#[diesel(column_name = #column)])
            }
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
        let moving = seal.moving.as_ref();
        let stored_ty = if f.option_inner.is_some() || adopt.is_some() || moving.is_some() {
            quote!(::core::option::Option<::std::vec::Vec<u8>>)
        } else {
            quote!(::std::vec::Vec<u8>)
        };
        let doc_sealed = if bound == stored_name {
            format!("`{column}`, sealed: a leakless envelope.")
        } else {
            format!(
                "`{column}`, sealed: a leakless envelope bound to column name `{bound}`, \
                 stored in `{stored_name}`."
            )
        };
        let stored_attr = column_attr(ident, stored);
        row_fields.push(quote!(#[doc = #doc_sealed] #stored_attr pub #ident: #stored_ty));
        row_debug.push(quote!(.field(#column, &self.#ident)));
        // Where the field's envelope lives, bound into it: table, column, row, schema version.
        let at = quote!(#p::FieldContext::new(#table, #bound, __row, #version));
        let seal_one = |v: TokenStream2| {
            quote!(#p::KeyRing::seal_value::<#value_ty>(
                ring, &__scope, &#at, #v, &#policy,
            )?)
        };
        let open_one = |e: TokenStream2| quote!(#p::KeyRing::open_value::<#value_ty>(ring, &__scope, &#at, #e)?);
        // `make` of the field's value, as an `Option` (the row field of a moving or adopted
        // field): mapped over the value of an optional field, else `Some`.
        let some_of = |make: &dyn Fn(TokenStream2) -> TokenStream2| {
            if f.option_inner.is_some() {
                let x = make(quote!(v));
                quote!(match &self.#ident {
                    ::core::option::Option::Some(v) => ::core::option::Option::Some(#x),
                    ::core::option::Option::None => ::core::option::Option::None,
                })
            } else {
                let x = make(quote!(&self.#ident));
                quote!(::core::option::Option::Some(#x))
            }
        };
        let local = format_ident!("__open_{}", ident);
        if let Some(mv) = moving {
            // Moving between columns: both hold the same envelope (it binds `bound`, not where
            // it is stored); writes fill both, reads prefer the column of the stage.
            let mf = &mv.from;
            let mf_name = mf.to_string();
            let doc_move = format!(
                "`{mf_name}`, the column the envelopes of `{column}` are moving out of (a copy)."
            );
            row_fields.push(
                quote!(#[doc = #doc_move] pub #mf: ::core::option::Option<::std::vec::Vec<u8>>),
            );
            row_debug.push(quote!(.field(#mf_name, &self.#mf)));
            let sealed = format_ident!("__sealed_{}", ident);
            let s = some_of(&seal_one);
            seal_lets.push(quote!(let #sealed = #s;));
            seal_inits.push(quote!(#mf: ::core::clone::Clone::clone(&#sealed)));
            seal_inits.push(quote!(#ident: #sealed));
            let o = open_one(quote!(e));
            let either = if mv.read_new {
                quote!(row.#ident.as_deref().or(row.#mf.as_deref()))
            } else {
                quote!(row.#mf.as_deref().or(row.#ident.as_deref()))
            };
            if f.option_inner.is_some() {
                open_lets.push(quote!(let #local = match #either {
                    ::core::option::Option::Some(e) => ::core::option::Option::Some(#o),
                    ::core::option::Option::None => ::core::option::Option::None,
                };));
            } else {
                open_lets.push(quote!(let #local = match #either {
                    ::core::option::Option::Some(e) => #o,
                    ::core::option::Option::None => return ::core::result::Result::Err(
                        #p::not_moved(#table, #stored_name, #mf_name, __row)),
                };));
            }
        } else if let Some(a) = adopt {
            any_adopt = true;
            let stage = a.stage.spelling();
            let text = is_string(&value_ty);
            // The row's fields for the legacy plaintext columns (renamed where a model field
            // has a column's name): one column of the value's own type, or a pair of numbers.
            let (plain_ty, copy_fn) = match (&a.pair, text) {
                (Some(_), _) => (quote!(f64), format_ident!("plaintext_pair")),
                (None, true) => (
                    quote!(::std::string::String),
                    format_ident!("plaintext_text"),
                ),
                (None, false) => (
                    quote!(::std::vec::Vec<u8>),
                    format_ident!("plaintext_bytes"),
                ),
            };
            let legacy: Vec<Ident> = a
                .columns()
                .into_iter()
                .map(|c| {
                    let field = legacy_ident(c, &m.fields);
                    let attr = column_attr(&field, c);
                    let doc = format!(
                        "`{c}`, a legacy plaintext column `{column}` is adopted from (stage `{stage}`)."
                    );
                    row_fields.push(quote!(#[doc = #doc] #attr
                        pub #field: ::core::option::Option<#plain_ty>));
                    let name = field.to_string();
                    row_debug.push(quote!(.field(#name, &::core::format_args!("<plaintext>"))));
                    field
                })
                .collect();
            let keys: Vec<String> = a
                .pair
                .iter()
                .flatten()
                .map(|(k, _)| k.to_string())
                .collect();
            // Stage `read_plaintext` keeps the legacy columns written for older builds.
            let copy_of = |v: TokenStream2| {
                if keys.is_empty() {
                    quote!([#p::#copy_fn::<#value_ty>(#v)?])
                } else {
                    quote!(#p::#copy_fn::<#value_ty>(#v, [#(#keys),*])?)
                }
            };
            let plain = format_ident!("__plain_{}", ident);
            let kept = if a.stage != Stage::ReadPlaintext {
                quote!(::core::option::Option::None)
            } else {
                some_of(&copy_of)
            };
            let n = legacy.len();
            seal_lets.push(quote!(let #plain: ::core::option::Option<[#plain_ty; #n]> = #kept;));
            let reads = a.stage != Stage::SealedOnly;
            let s = some_of(&seal_one);
            seal_inits.push(quote!(#ident: #s));
            let (Some(f0), f1) = (legacy.first(), legacy.get(1)) else {
                return Err(syn::Error::new(ident.span(), "an adoption names no column"));
            };
            let plain_bytes = if let Some(f1) = f1 {
                seal_inits.push(quote!(#f0: #plain.map(|[v, _]| v)));
                seal_inits.push(quote!(#f1: #plain.map(|[_, v]| v)));
                let Some([(k0, c0), (k1, c1)]) = &a.pair else {
                    return Err(syn::Error::new(ident.span(), "a pair names two columns"));
                };
                let [k0, c0, k1, c1] = [k0, c0, k1, c1].map(ToString::to_string);
                quote!(#p::pair_plaintext(#table, __row, [
                    (#k0, #c0, row.#f0), (#k1, #c1, row.#f1),
                ])?)
            } else {
                seal_inits.push(quote!(#f0: #plain.map(|[v]| v)));
                if text {
                    quote!(row.#f0.map(::std::string::String::into_bytes))
                } else {
                    quote!(row.#f0)
                }
            };
            let opened = quote!(#p::open_adopting::<#value_ty>(
                ring, &__scope, &#at, row.#ident.as_deref(), #plain_bytes, #reads,
            )?);
            if f.option_inner.is_some() {
                open_lets.push(quote!(let #local = #opened;));
            } else {
                open_lets.push(quote!(let #local = match #opened {
                    ::core::option::Option::Some(v) => v,
                    ::core::option::Option::None => return ::core::result::Result::Err(
                        #p::not_backfilled(#table, #stored_name, __row, #stage)),
                };));
            }
        } else if f.option_inner.is_some() {
            let s = some_of(&seal_one);
            seal_inits.push(quote!(#ident: #s));
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
        spent_fields.push(ident.clone());
        if let Some(mv) = moving {
            spent_fields.push(mv.from.clone());
        }
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
                let per_tenant = b.per_tenant;
                // A per-tenant index key: the prefix followed by the row's tenant, exactly as
                // the model's own per-tenant scope (the validation ensures the model has one).
                let tenant_field = match &m.scope {
                    ScopeAttr::PerTenant { field, .. } if per_tenant => Some(field),
                    _ => None,
                };
                let tenant_of = |from: TokenStream2| match tenant_field {
                    Some(tf) => quote!(::core::option::Option::Some(
                        &#from.#tf as &dyn ::core::fmt::Display)),
                    None => quote!(::core::option::Option::None),
                };
                let self_tenant = tenant_of(quote!(self));
                let tenant_ty = tenant_field.and_then(|tf| {
                    m.fields
                        .iter()
                        .find(|f| &f.ident == tf)
                        .map(|f| f.ty.clone())
                });
                let doc_b = format!("Blind index of `{column}` (HMAC tokens, no plaintext).");
                row_fields.push(quote!(#[doc = #doc_b] pub #bcol: #stored_ty));
                spent_fields.push(bcol.clone());
                row_debug.push(quote!(.field(#bcol_name, &self.#bcol)));
                let (doc_lookup, tenant_param, tenant_arg) = match &tenant_ty {
                    Some(ty) => (
                        format!(
                            "The blind-index tokens to find the rows of `tenant` whose `{column}` \
                             equals `value` (the index key is the tenant's own): match them with \
                             `{table}::{bcol_name}.eq_any(tokens)`."
                        ),
                        quote!(tenant: &#ty,),
                        quote!(::core::option::Option::Some(
                            tenant as &dyn ::core::fmt::Display
                        )),
                    ),
                    None => (
                        format!(
                            "The blind-index tokens to find rows whose `{column}` equals \
                             `value`: match them with `{table}::{bcol_name}.eq_any(tokens)`."
                        ),
                        quote!(),
                        quote!(::core::option::Option::None),
                    ),
                };
                lookups.push(quote! {
                    #[doc(hidden)]
                    fn #spec_fn(
                        tenant: ::core::option::Option<&dyn ::core::fmt::Display>,
                    ) -> ::core::result::Result<#p::BlindIndexSpec, #p::Error> {
                        let mut spec = #p::BlindIndexSpec::new(#table, #bound, #p::scope(#bscope, tenant)?);
                        spec.bytes = #bytes;
                        spec.normalizer = #normalizer;
                        ::core::result::Result::Ok(spec)
                    }
                    #[doc = #doc_lookup]
                    ///
                    /// # Errors
                    /// The key errors of the index-key scope, or an encoding error.
                    // The tenant is taken as the model field's own type, `&String` included.
                    #[allow(clippy::ptr_arg)]
                    #vis fn #lookup_fn(
                        ring: &#p::KeyRing,
                        #tenant_param
                        value: &#value_ty,
                    ) -> ::core::result::Result<::std::vec::Vec<::std::vec::Vec<u8>>, #p::Error> {
                        #p::blind_index_candidates(ring, &Self::#spec_fn(#tenant_arg)?, value)
                    }
                });
                let init = if f.option_inner.is_some() {
                    quote!(#bcol: match &self.#ident {
                        ::core::option::Option::Some(v) => ::core::option::Option::Some(
                            #p::blind_index(ring, &Self::#spec_fn(#self_tenant)?, v)?),
                        ::core::option::Option::None => ::core::option::Option::None,
                    })
                } else if adopt.is_some() || moving.is_some() {
                    // Rows not yet adopted have no token: the column is nullable while the
                    // adoption runs; this build always writes one.
                    quote!(#bcol: ::core::option::Option::Some(
                        #p::blind_index(ring, &Self::#spec_fn(#self_tenant)?, &self.#ident)?))
                } else {
                    quote!(#bcol: #p::blind_index(ring, &Self::#spec_fn(#self_tenant)?, &self.#ident)?)
                };
                (
                    quote!(::core::option::Option::Some(#p::BlindIndexColumn {
                        column: ::std::string::String::from(#bcol_name),
                        scope: ::std::string::String::from(#bscope),
                        bytes: #bytes,
                        normalizer: #normalizer,
                        per_tenant: #per_tenant,
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
                let pair = match &a.pair {
                    None => quote!(::core::option::Option::None),
                    Some([(k0, _), (k1, c1)]) => {
                        let (k0, k1, c1) = (k0.to_string(), k1.to_string(), c1.to_string());
                        quote!(::core::option::Option::Some(#p::AdoptionPair {
                            first_key: ::std::string::String::from(#k0),
                            second_column: ::std::string::String::from(#c1),
                            second_key: ::std::string::String::from(#k1),
                        }))
                    }
                };
                quote!(::core::option::Option::Some(#p::AdoptionColumn {
                    from_column: ::std::string::String::from(#from_name),
                    stage: #p::AdoptionStage::#stage,
                    pair: #pair,
                }))
            }
        };
        let bound_as = if bound == stored_name {
            quote!(::core::option::Option::None)
        } else {
            quote!(::core::option::Option::Some(::std::string::String::from(#bound)))
        };
        manifest_columns.push(quote!(#p::SealedColumn {
            column: ::std::string::String::from(#stored_name),
            bound_as: #bound_as,
            moving_to: ::core::option::Option::None,
            algorithm: #alg,
            encoding: <#value_ty as #p::Sealable>::ENCODING,
            padding: #padding,
            nullable: #nullable,
            blind_index: #bidx_manifest,
            adoption: #adoption_manifest,
        }));
        if let Some(mf) = moving.map(|mv| &mv.from) {
            // The column being moved out of holds the same envelopes: the migrator re-wraps,
            // counts and verifies it like any sealed column until it is dropped.
            let mf_name = mf.to_string();
            manifest_columns.push(quote!(#p::SealedColumn {
                column: ::std::string::String::from(#mf_name),
                bound_as: ::core::option::Option::Some(::std::string::String::from(#bound)),
                moving_to: ::core::option::Option::Some(::std::string::String::from(#stored_name)),
                algorithm: #alg,
                encoding: <#value_ty as #p::Sealable>::ENCODING,
                padding: #padding,
                nullable: true,
                blind_index: ::core::option::Option::None,
                adoption: ::core::option::Option::None,
            }));
        }
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
                #(#seal_lets)*
                ::core::result::Result::Ok(#row_name {
                    #(#seal_inits,)*
                })
            }

            fn open_row(row: #row_name, #ring: &#p::KeyRing) -> ::core::result::Result<Self, #p::Error> {
                <Self as #p::Sealed>::open_row_spending(row, #ring, &mut #p::SpentBuffers::free_now())
            }

            fn open_row_spending(
                row: #row_name,
                #ring: &#p::KeyRing,
                __spent: &mut #p::SpentBuffers,
            ) -> ::core::result::Result<Self, #p::Error> {
                let __scope = #open_scope_expr;
                let __row = #p::AsRowId::row_id(&row.#row_id);
                #(#open_lets)*
                let __model = Self {
                    #(#open_inits,)*
                };
                #(__spent.keep(row.#spent_fields);)*
                ::core::result::Result::Ok(__model)
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
