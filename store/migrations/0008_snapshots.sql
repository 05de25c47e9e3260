-- Snapshots (issue 26): a sandbox's file system captured on the runner that took it
-- (which keeps it: a create from it is placed there). The create-time env (secrets)
-- is not here: it stays on that runner beside the snapshot, as a sandbox's stays in
-- its container's config. `spec` is JSON: the source's image, limits, network policy
-- and disk quota, without env or repository token.
CREATE TABLE snapshots (
    id         TEXT NOT NULL PRIMARY KEY,
    owner_id   TEXT NOT NULL REFERENCES users (id),
    source_id  TEXT NOT NULL,
    runner_id  TEXT NOT NULL REFERENCES runners (id),
    name       TEXT,
    image      TEXT NOT NULL,
    spec       TEXT NOT NULL,
    repo       TEXT,
    branch     TEXT,
    size_bytes BIGINT NOT NULL CHECK (size_bytes >= 0),
    frozen_ms  BIGINT NOT NULL CHECK (frozen_ms >= 0),
    created_at BIGINT NOT NULL
);
-- Listing an owner's snapshots, newest first.
CREATE INDEX snapshots_owner ON snapshots (owner_id, created_at, id);
