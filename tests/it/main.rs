//! Integration tests: one binary, each test starts the real server on 127.0.0.1 with a
//! free port, a temporary data directory and its own dev certificates.

mod process;
mod util;

mod at_rest;
mod audit;
mod backup;
mod bad_input;
mod logs;
mod metrics;
mod records;
mod restart;
mod shutdown;
mod tenants;
mod tls;
