-- A dead change keeps its request so an operator can retry it, and what
-- was done about it (retried as another change, or discarded and why).
ALTER TABLE provisioning_log ADD COLUMN request TEXT;
ALTER TABLE provisioning_log ADD COLUMN resolution TEXT;
