//! The keygate binary's library half: configuration loading, the CLI, and the wiring that turns
//! a validated configuration into a running gateway. `main.rs` only calls [`cli::main`], so
//! tests boot the very same [`app::Gateway`] in-process.
#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod listener;
pub mod metrics;
pub mod password;
pub mod settings;
pub mod tail;
pub mod tls;
