-- People who signed in through the browser, known by their pseudonymous subject.
CREATE TABLE users (
    subject       TEXT PRIMARY KEY,          -- pseudonym: HMAC of (issuer, IdP subject)
    issuer        TEXT NOT NULL,
    idp_subject   TEXT NOT NULL,
    email         TEXT NOT NULL,
    name          TEXT NOT NULL,
    webauthn_id   TEXT NOT NULL UNIQUE,      -- random user handle given to authenticators
    created_at    INTEGER NOT NULL,
    last_login_at INTEGER NOT NULL,
    UNIQUE (issuer, idp_subject)
);

-- Passkeys (WebAuthn credentials). `passkey` is webauthn-rs's serialized credential.
CREATE TABLE passkeys (
    id              TEXT PRIMARY KEY,
    user_subject    TEXT NOT NULL REFERENCES users (subject) ON DELETE CASCADE,
    credential_id   TEXT NOT NULL UNIQUE,    -- base64url
    name            TEXT NOT NULL,
    aaguid          TEXT NOT NULL,
    passkey         TEXT NOT NULL,
    backup_eligible INTEGER NOT NULL,
    backup_state    INTEGER NOT NULL,
    sign_count      INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    last_used_at    INTEGER
);
CREATE INDEX passkeys_user ON passkeys (user_subject);

-- Personal API tokens act as their user (a Twinward::User principal) with a subset of the
-- user's roles; service-account tokens leave this empty.
ALTER TABLE api_tokens ADD COLUMN user_subject TEXT;
CREATE INDEX api_tokens_user ON api_tokens (user_subject);
