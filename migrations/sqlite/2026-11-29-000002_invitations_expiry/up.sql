-- The reconciler deletes invitations some days past their expiry, a few
-- thousand a pass; without this each pass would read the whole table.
CREATE INDEX invitations_expires ON invitations(expires_at);
