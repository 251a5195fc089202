-- The pair a refresh answered, kept on the token it rotated for the reuse interval (ADR 0008): a
-- second presentation of that token within the interval (two tabs refreshing at once, a retry
-- after a lost answer) gets the same pair instead of killing the session. Sealed with AES-256-GCM
-- under a key derived from the rotated token itself, which only its holder has: the database
-- alone cannot open it.
ALTER TABLE refresh_tokens ADD COLUMN successor bytea;
