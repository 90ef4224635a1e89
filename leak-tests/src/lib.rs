//! The leak-test harness. Empty until the leak-test issue lands; nothing here is exported yet.
