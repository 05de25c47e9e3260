-- Warren gateway schema, version 1.
--
-- One schema for SQLite and PostgreSQL, so only portable SQL: ids are TEXT (random,
-- prefixed, made by the gateway; no AUTOINCREMENT/SERIAL), times are BIGINT Unix
-- seconds, integers are BIGINT. Flags are BIGINT 0/1, not BOOLEAN: both databases
-- accept BOOLEAN, but sqlx's Any driver refuses to read a SQLite column declared
-- BOOLEAN ("Any driver does not support the SQLite type Bool"). Every PRIMARY KEY
-- is also NOT NULL (SQLite would otherwise allow NULL in a non-INTEGER key). Secrets are never stored:
-- api_keys.hash and join_tokens.hash hold "sha256:<hex>" of the secret.

CREATE TABLE users (
    id         TEXT NOT NULL PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    is_admin   BIGINT NOT NULL DEFAULT 0 CHECK (is_admin IN (0, 1)),
    created_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id           TEXT NOT NULL PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    prefix       TEXT NOT NULL,
    hash         TEXT NOT NULL UNIQUE,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at   BIGINT
);
CREATE INDEX api_keys_prefix ON api_keys (prefix);
CREATE INDEX api_keys_user ON api_keys (user_id);

CREATE TABLE ssh_keys (
    id          TEXT NOT NULL PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (user_id, fingerprint)
);
CREATE INDEX ssh_keys_fingerprint ON ssh_keys (fingerprint);

CREATE TABLE runners (
    id           TEXT NOT NULL PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    public_key   TEXT NOT NULL UNIQUE,
    labels       TEXT NOT NULL,
    capacity     BIGINT NOT NULL CHECK (capacity >= 0),
    state        TEXT NOT NULL CHECK (state IN ('online', 'offline')),
    last_seen_at BIGINT,
    created_at   BIGINT NOT NULL
);

CREATE TABLE join_tokens (
    id         TEXT NOT NULL PRIMARY KEY,
    hash       TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT,
    runner_id  TEXT REFERENCES runners (id) ON DELETE SET NULL
);

CREATE TABLE sandboxes (
    id             TEXT NOT NULL PRIMARY KEY,
    owner_id       TEXT NOT NULL REFERENCES users (id),
    runner_id      TEXT REFERENCES runners (id),
    image          TEXT NOT NULL,
    repo           TEXT,
    branch         TEXT,
    state          TEXT NOT NULL
        CHECK (state IN ('creating', 'running', 'stopped', 'deleted', 'failed')),
    cpus           DOUBLE PRECISION NOT NULL CHECK (cpus > 0),
    memory_mb      BIGINT NOT NULL CHECK (memory_mb > 0),
    idle_timeout_s BIGINT,
    ttl_s          BIGINT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
-- Listing an owner's sandboxes, newest first, by (created_at, id) keyset pages.
CREATE INDEX sandboxes_owner ON sandboxes (owner_id, created_at, id);
CREATE INDEX sandboxes_runner ON sandboxes (runner_id);

-- A sandbox's state history: seq is 1, 2, 3, … per sandbox, written in the same
-- transaction as the state change it records.
CREATE TABLE sandbox_events (
    sandbox_id TEXT NOT NULL REFERENCES sandboxes (id),
    seq        BIGINT NOT NULL,
    at         BIGINT NOT NULL,
    from_state TEXT,
    to_state   TEXT NOT NULL,
    reason     TEXT NOT NULL,
    PRIMARY KEY (sandbox_id, seq)
);

-- Audit: one row per SSH connection to a sandbox. user_id is NULL for logins by
-- sandbox token.
CREATE TABLE ssh_sessions (
    id          TEXT NOT NULL PRIMARY KEY,
    user_id     TEXT REFERENCES users (id),
    sandbox_id  TEXT NOT NULL REFERENCES sandboxes (id),
    source_addr TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    ended_at    BIGINT,
    bytes_in    BIGINT NOT NULL DEFAULT 0,
    bytes_out   BIGINT NOT NULL DEFAULT 0,
    exit_status BIGINT,
    exit_signal TEXT
);
CREATE INDEX ssh_sessions_sandbox ON ssh_sessions (sandbox_id, started_at);
