//! Shared pieces of keygate's benchmarks (see `proxy.rs`).
#![forbid(unsafe_code)]
