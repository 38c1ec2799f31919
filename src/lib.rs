//! pii-vault: an encrypted personal-data vault served over gRPC.
//!
//! # Architecture
//!
//! Layers, top to bottom; a module uses only modules below it.
//!
//! | module    | owns |
//! |-----------|------|
//! | `cli`     | (binary) subcommands: serve, tenant, put/get, ... |
//! | `server`  | `run(listener, config, shutdown)`: rustls mTLS, health, reflection, drain |
//! | `config`  | TOML + flags turned into a validated `Config`; dev defaults on first start |
//! | `api`     | tonic handlers, proto ⇄ domain conversion, the one `Error → Status` mapping |
//! | `proto`   | generated code only |
//! | `service` | use cases: tenants, put/get/delete fields |
//! | `keyring` | root key → tenant KEK → subject DEK: create, wrap, unwrap |
//! | `storage` | the `Store` trait, the sled backend, record codecs, group commit, backups |
//! | `authz`   | the caller's identity, taken from its verified client certificate |
//! | `crypto`  | secret key types, sealed envelope with AAD, opaque errors |
//! | `domain`  | ids, fields, categories, time; no I/O |
//!
//! `certs` issues the CA, server and client certificates (dev default and `pii-vault certs`).
//! `metrics` is the registry the server exposes on `/metrics`; `service` and `storage`
//! record into it through its small API (it uses only `domain`).

pub mod api;
pub mod audit;
pub mod authz;
pub mod certs;
pub mod client;
pub mod codec;
pub mod config;
pub mod crypto;
pub mod dev;
pub mod domain;
pub mod keyring;
pub mod metrics;
pub mod proto;
pub mod server;
pub mod service;
pub mod storage;
