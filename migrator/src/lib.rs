//! The DBA migrator (`leakless-migrate`). Empty until the migrator issue lands; nothing here is exported yet.
