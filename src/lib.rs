//! scopegate: repository-scoped authorization in front of an unmodified container registry.
pub mod access;
pub mod body;
pub mod oci;
pub mod reject;
pub mod route;
pub mod policy;
pub mod auth;
pub mod token;
pub mod store;
pub mod config;
pub mod proxy;
pub mod gateway;
pub mod state;
pub mod admin;
pub mod server;
pub mod cli;
pub mod clock;
