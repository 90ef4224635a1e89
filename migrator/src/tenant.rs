//! The key scope each row of a per-tenant table must use.
//!
//! The application builds a per-tenant row's scope as the manifest's `prefix` followed by the
//! tenant field's `Display` ([`leakless::__private::scope`]). The migrator reads the tenant
//! column as text with each row and builds the scope with that same function. The SQL text
//! form equals Rust's `Display` only for integer and text columns, so [`TenantScope::probe`]
//! refuses any other column type up front instead of checking some rows wrongly or none.

use leakless::KeyScope;
use leakless::manifest::{ScopeSource, SealedTable};

use crate::db::{Backend, Db, ident};
use crate::error::{Failure, Kind, Result};

/// How the rows of a per-tenant table name their scope: the prefix and the SQL expression
/// reading the tenant column as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantScope {
    /// The scope-name prefix from the manifest, e.g. `tenant:`.
    pub prefix: String,
    /// The tenant column.
    pub column: String,
    /// SQL reading the tenant column as its decimal or text form (NULL when a row's value is
    /// neither, on SQLite).
    pub expr: String,
}

/// Whether a declared column type reads as text that equals Rust's `Display` of the value.
fn displayable(backend: Backend, ty: &str) -> bool {
    let ty = ty.to_ascii_lowercase();
    match backend {
        Backend::Postgres => {
            ["smallint", "integer", "bigint", "text", "character varying"].contains(&ty.as_str())
        }
        Backend::Mysql => [
            "tinyint",
            "smallint",
            "mediumint",
            "int",
            "bigint",
            "char",
            "varchar",
            "tinytext",
            "text",
            "mediumtext",
            "longtext",
        ]
        .contains(&ty.as_str()),
        // SQLite's affinity rules (section 3.1 of "Datatypes in SQLite"): INTEGER affinity,
        // or TEXT affinity; each row's value is checked again when read (`typeof`).
        Backend::Sqlite => {
            ty.contains("int") || ty.contains("char") || ty.contains("clob") || ty.contains("text")
        }
    }
}

impl TenantScope {
    /// The tenant scope of `t`: `None` for a table with a static scope. Reads the tenant
    /// column's declared type from the database.
    ///
    /// # Errors
    /// [`Kind::Usage`] when the tenant column is missing or is neither an integer nor a text
    /// column (its text in SQL might differ from the application's `Display`, so the scope
    /// check cannot be made); [`Kind::Database`].
    pub fn probe(db: &mut Db, t: &SealedTable) -> Result<Option<Self>> {
        let ScopeSource::PerTenant { column, prefix } = &t.scope else {
            return Ok(None);
        };
        ident(column)?;
        let Some(ty) = db.column_type(&t.table, column)? else {
            return Err(Failure::new(
                Kind::Usage,
                format!(
                    "{}.{}: the manifest's tenant column is not in the table",
                    t.table, column
                ),
                "fix the manifest's per-tenant scope column",
            ));
        };
        if !displayable(db.backend(), &ty) {
            return Err(Failure::new(
                Kind::Usage,
                format!(
                    "{}.{}: the tenant column is {ty}; the key-scope check of a per-tenant \
                     table needs an integer or text tenant column",
                    t.table, column
                ),
                "the scope is the prefix plus the tenant's Display form, which SQL can \
                 rebuild only from integers and text; verify such a table through the \
                 application's reads",
            ));
        }
        let c = format!("{}.{}", db.q(&t.table), db.q(column));
        let expr = match db.backend() {
            Backend::Postgres => format!("{c}::text"),
            Backend::Mysql => format!("CAST({c} AS CHAR)"),
            Backend::Sqlite => {
                format!("CASE WHEN typeof({c}) IN ('integer', 'text') THEN CAST({c} AS TEXT) END")
            }
        };
        Ok(Some(Self {
            prefix: prefix.clone(),
            column: column.clone(),
            expr,
        }))
    }

    /// The scope a row whose tenant column reads `tenant` must use, built as the runtime
    /// builds it; or why there is none (the reason names the column, never a value).
    ///
    /// # Errors
    /// A message when the tenant is NULL (or, on SQLite, neither an integer nor text) or
    /// makes no valid scope name.
    pub fn expected(&self, tenant: Option<&str>) -> std::result::Result<KeyScope, String> {
        let Some(tenant) = tenant else {
            return Err(format!(
                "tenant column {} is NULL or not an integer or text, so the row has no key scope",
                self.column
            ));
        };
        leakless::__private::scope(&self.prefix, Some(&tenant)).map_err(|e| {
            format!(
                "tenant column {}: no valid key scope from its value: {e}",
                self.column
            )
        })
    }

    /// SQL for a NULL of the tenant text type, read in place of the tenant on static tables.
    #[must_use]
    pub fn null_expr(backend: Backend) -> &'static str {
        match backend {
            Backend::Postgres => "NULL::text",
            Backend::Mysql => "CAST(NULL AS CHAR)",
            Backend::Sqlite => "NULL",
        }
    }
}
