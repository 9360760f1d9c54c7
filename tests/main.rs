//! One integration-test binary (a 2-core machine links one binary, not ten).

mod api;
mod arch;
mod causal;
mod cli;
mod common;
mod finder;
mod fuzz;
mod hardening;
mod loader_corpus;
mod memory;
mod model_load;
mod models;
mod openapi;
mod probe;
mod quant;
mod trace;
mod train;
