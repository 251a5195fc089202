-- Second factors: one TOTP secret per user (sealed under the KEK like the signing keys), its
-- single-use recovery codes (SHA-256), and the MFA-pending login challenges (SHA-256 of the
-- opaque token handed out after a correct password).

CREATE TABLE mfa_totp (
    user_id                uuid        PRIMARY KEY REFERENCES users (user_id),
    secret_nonce           bytea       NOT NULL,
    secret_sealed          bytea       NOT NULL,
    -- NULL while the enrolment waits for its first code; MFA is enabled once set.
    enabled_at             timestamptz,
    -- An unconfirmed enrolment is void after this.
    enrollment_expires_at  timestamptz NOT NULL,
    -- The newest time step accepted: a code of this step or an older one is refused, so each
    -- code works once (the row lock orders concurrent attempts).
    last_used_step         bigint      NOT NULL DEFAULT 0,
    created_at             timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE mfa_recovery_codes (
    user_id     uuid        NOT NULL REFERENCES users (user_id),
    code_hash   bytea       NOT NULL,
    used_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, code_hash)
);

CREATE TABLE mfa_challenges (
    token_hash       bytea       PRIMARY KEY,
    user_id          uuid        NOT NULL REFERENCES users (user_id),
    device_name      text        NOT NULL DEFAULT '',
    failed_attempts  integer     NOT NULL DEFAULT 0,
    expires_at       timestamptz NOT NULL,
    used_at          timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX mfa_challenges_user ON mfa_challenges (user_id, expires_at);
