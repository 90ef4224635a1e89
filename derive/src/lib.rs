//! The derive macro for sealed model fields. Empty until the derive issue lands; nothing here is exported yet.
