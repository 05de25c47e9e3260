-- The session channels of each SSH session: what each ran (a shell, a command, a
-- subsystem such as sftp), whether it had a terminal, and how it ended. A terminal
-- channel's recording, if the gateway kept one, is the file
-- recordings/<session_id>/<seq>.cast in the data dir.
CREATE TABLE ssh_channels (
    session_id  TEXT NOT NULL REFERENCES ssh_sessions (id),
    seq         BIGINT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('shell', 'exec', 'subsystem')),
    command     TEXT,
    terminal    BIGINT NOT NULL DEFAULT 0 CHECK (terminal IN (0, 1)),
    started_at  BIGINT NOT NULL,
    ended_at    BIGINT,
    bytes_in    BIGINT NOT NULL DEFAULT 0,
    bytes_out   BIGINT NOT NULL DEFAULT 0,
    exit_status BIGINT,
    exit_signal TEXT,
    PRIMARY KEY (session_id, seq)
);
