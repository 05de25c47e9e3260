-- The disk quota a sandbox was made with, in MiB (its workspace, scratch
-- directories and writable layer); NULL: none (a runner that enforces none, or a
-- sandbox made before quotas).
ALTER TABLE sandboxes ADD COLUMN disk_mb BIGINT CHECK (disk_mb IS NULL OR disk_mb > 0);
