//! Registries: `kiln pull`/`push`/`login` and the distribution client against real
//! `docker-registry` servers (anonymous, htpasswd, token, TLS) started per test on 127.0.0.1,
//! with a fault-injecting proxy. Shared harness: tests/support.

#[path = "../support/mod.rs"]
mod support;

mod pull;
mod push;
mod registry_client;
