//! Key stores in a database table through diesel (being written).
