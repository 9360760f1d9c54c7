//! One integration-test binary (a 2-core machine links one binary, not ten).

mod api;
mod cli;
mod common;
mod finder;
mod model_load;
mod trace;
mod train;
