-- Finished terminal recordings, copied here by the gateway that recorded them when
-- several gateways share the database (PostgreSQL), so that any of them serves
-- them. Base64 text in pieces of at most 1 MiB (before encoding), in order of seq.
CREATE TABLE recording_chunks (
    session_id TEXT NOT NULL REFERENCES ssh_sessions (id),
    channel    BIGINT NOT NULL,
    seq        BIGINT NOT NULL,
    data       TEXT NOT NULL,
    stored_at  BIGINT NOT NULL,
    PRIMARY KEY (session_id, channel, seq)
);
CREATE INDEX recording_chunks_stored_at ON recording_chunks (stored_at);
