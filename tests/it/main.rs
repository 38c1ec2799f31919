//! Integration tests: one binary, each test starts the real server on 127.0.0.1 with a
//! free port, a temporary data directory and its own dev certificates.

mod util;

mod access;
mod at_rest;
mod audit;
mod authz;
mod bad_input;
mod erasure;
mod records;
mod restart;
mod tenants;
mod tls;
