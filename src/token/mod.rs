//! Token server placeholder (filled in below).
pub mod jwt;
pub mod keys;
pub mod scope;
