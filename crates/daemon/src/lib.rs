//! The chorus daemon (being built).
