-- A gateway tier (issue 29): several gateways on one PostgreSQL store.
--
-- `gateway_keys`: the keys every gateway of a tier shares (the SSH host key, the
-- token signing key), each sealed (AES-256-GCM) under the operator's cluster
-- secret, which never reaches the database. The first gateway writes them; a slot
-- is never overwritten.
CREATE TABLE gateway_keys (
    slot       TEXT NOT NULL PRIMARY KEY,
    sealed     TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
-- `gateways`: the live members, each registered at start, heartbeating, removed on
-- a clean stop; a row whose heartbeat is old is a gateway that died (ignored, then
-- deleted). Times are unix milliseconds of the writing gateway's clock.
CREATE TABLE gateways (
    id             TEXT NOT NULL PRIMARY KEY,
    ssh_address    TEXT NOT NULL,
    runner_address TEXT NOT NULL,
    started_at     BIGINT NOT NULL,
    heartbeat_at   BIGINT NOT NULL
);
CREATE INDEX gateways_heartbeat ON gateways (heartbeat_at);
