//! pii-vault: an encrypted personal-data vault served over gRPC.
//!
//! # Architecture
//!
//! Layers, top to bottom: a module uses only the modules its row names, all of them further
//! down (`.ci/layers` checks this table against the code). The binary's `cli` (in
//! `src/cli`, declared by `main.rs`) sits on top and may use everything.
//!
//! | module    | owns | may use |
//! |-----------|------|---------|
//! | `server`  | `run(listener, config, shutdown)`: rustls mTLS, health, reflection, metrics endpoint, background tasks, drain | api, config, service, keyring, authz, storage, metrics, proto, crypto, domain |
//! | `dev`     | what a first dev start creates: data directory, root key, dev PKI, dev policy | config, keyring, authz, certs, storage |
//! | `config`  | raw TOML form validated into the `Config` the server runs with; no file I/O | service, keyring, storage, authz, certs, domain |
//! | `client`  | connecting to a vault over mutual TLS (the CLI, tests, benchmarks, examples), error details decoded, a typed client with retries | config, certs, proto |
//! | `api`     | tonic handlers, proto ⇄ domain conversion, the one `ServiceError → Status` mapping | service, authz, domain, proto |
//! | `proto`   | code generated from `proto/`, and the codec it is generated with | — |
//! | `service` | use cases (records, rights, erasure, keys, audit, retention), each run through one use-case context | keyring, storage, audit, authz, metrics, codec, crypto, domain |
//! | `keyring` | root key → tenant KEK → subject DEK: create, wrap, unwrap, rotate, destroy; bounded DEK cache | storage, crypto, domain |
//! | `storage` | the `Store` trait, backend-neutral rules, the sled and PostgreSQL backends, record codecs, group commit, backups | crypto, codec, metrics, domain |
//! | `audit`   | the event type (no values), chain MACs, pure verification | crypto, codec, domain |
//! | `authz`   | the caller's typed identity, the policy, the decision and its proof | domain |
//! | `metrics` | the registry the server exposes on `/metrics`, and the small API the layers record through | domain |
//! | `certs`   | issuing CA, server and client certificates (dev default and `pii-vault certs`) | — |
//! | `codec`   | the length-prefixed binary encoding of stored records and events | — |
//! | `crypto`  | secret key types, sealed envelope with AAD, MACs, digests, opaque errors, the TLS crypto provider | — |
//! | `domain`  | ids, fields, categories, consent, retention rules, time; no I/O | — |

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
