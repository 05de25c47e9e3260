-- Whether the owner's own sessions may forward their SSH agent into the sandbox
-- (`ssh -A`). Off unless the owner asks at create: a forwarded agent lets code in
-- the sandbox sign with the user's keys (often the very key registered here).
-- Never for a user the sandbox is shared with.
ALTER TABLE sandboxes ADD COLUMN forward_agent BIGINT NOT NULL DEFAULT 0;
