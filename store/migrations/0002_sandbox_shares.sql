-- Users a sandbox's owner shares it with: they may ssh in (relay and jump mode),
-- as the owner may. Lifecycle and pull requests stay the owner's.
CREATE TABLE sandbox_shares (
    sandbox_id TEXT NOT NULL REFERENCES sandboxes (id),
    user_id    TEXT NOT NULL REFERENCES users (id),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (sandbox_id, user_id)
);
CREATE INDEX sandbox_shares_user ON sandbox_shares (user_id);
