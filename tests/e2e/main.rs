//! Integration and end-to-end tests, in one binary to link once: the real gateway binary,
//! real upstreams, real files, real nginx and an independent JOSE implementation.

mod browser_smoke;
mod cli;
mod common;
mod connections;
mod credentials;
mod demo;
mod fast_path;
mod forward_auth;
mod idp_smoke;
mod paths;
mod policy_reload;
mod policy_slicing;
mod proxy_auth;
mod signin;
mod signin_oidc;
mod streaming;
mod token_exchange;
