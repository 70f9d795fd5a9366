//! twinward: a zero-trust, identity-aware access gateway for digital twins.
//!
//! A request meets the modules in this order: [`http`] accepts it, [`routing`] normalizes its
//! path and finds the route, [`signals`] reads the client's network, [`access`] authenticates
//! the principal ([`identity`]), decides by [`policy`], mints a twin credential
//! ([`credentials`]) and records the decision ([`audit`]); [`http`] then proxies to the twin.
//! Only [`http`] knows about HTTP types.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod access;
pub mod audit;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod demo;
pub mod digest;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod mfa;
pub mod policy;
pub mod private_file;
pub mod routing;
pub mod server;
pub mod session;
pub mod signals;
pub mod storage;
