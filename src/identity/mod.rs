//! Who is asking: API tokens for tools (and, with browser sign-in, OIDC users), and the
//! pseudonymous subject twins see instead of the production identity.

pub mod api_token;
pub mod oidc;
pub mod pseudonym;
