-- Whether a share also gives the sandbox's create-time environment (its secrets,
-- such as the GITHUB_TOKEN pull requests push with) to the shared user's sessions.
-- The owner chooses at share time; existing shares and the default give none.
ALTER TABLE sandbox_shares ADD COLUMN secrets BIGINT NOT NULL DEFAULT 0;
