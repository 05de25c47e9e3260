-- When the owner last rotated the sandbox's tokens (unix seconds): sandbox tokens
-- the gateway minted for it up to then are refused from then on.
ALTER TABLE sandboxes ADD COLUMN tokens_revoked_at BIGINT;
