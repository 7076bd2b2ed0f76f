DROP INDEX invitations_expires;
