-- Every revocation committed here, until identity has written it to Redis (ADR 0030). The rows are
-- written by triggers in the transaction that revokes, so no code path can revoke without a row,
-- and a crash or a Redis outage between the commit and the Redis write loses nothing: identity
-- replays the journal until Redis has acknowledged every row, and only then certifies Redis
-- complete again (the `epoch` key).
CREATE TABLE revocation_journal (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text        NOT NULL CHECK (kind IN ('token', 'session', 'token_version', 'client')),
    jti         uuid,
    session_id  uuid,
    user_id     uuid,
    client_id   text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'token') = (jti IS NOT NULL)),
    CHECK ((kind = 'session') = (session_id IS NOT NULL)),
    CHECK ((kind = 'token_version') = (user_id IS NOT NULL)),
    CHECK ((kind = 'client') = (client_id IS NOT NULL))
);

CREATE FUNCTION journal_revocation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'revoked_tokens' THEN
        INSERT INTO revocation_journal (kind, jti) VALUES ('token', NEW.jti);
    ELSIF TG_TABLE_NAME = 'sessions' THEN
        INSERT INTO revocation_journal (kind, session_id) VALUES ('session', NEW.session_id);
    ELSIF TG_TABLE_NAME = 'users' THEN
        INSERT INTO revocation_journal (kind, user_id) VALUES ('token_version', NEW.user_id);
    ELSIF TG_TABLE_NAME = 'service_clients' THEN
        INSERT INTO revocation_journal (kind, client_id) VALUES ('client', NEW.client_id);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER revoked_tokens_journal AFTER INSERT ON revoked_tokens
    FOR EACH ROW EXECUTE FUNCTION journal_revocation();
CREATE TRIGGER sessions_journal AFTER UPDATE OF revoked_at ON sessions
    FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL)
    EXECUTE FUNCTION journal_revocation();
CREATE TRIGGER users_journal AFTER UPDATE OF token_version ON users
    FOR EACH ROW WHEN (NEW.token_version > OLD.token_version)
    EXECUTE FUNCTION journal_revocation();
CREATE TRIGGER service_clients_journal AFTER UPDATE OF status ON service_clients
    FOR EACH ROW WHEN (NEW.status = 'disabled' AND OLD.status <> 'disabled')
    EXECUTE FUNCTION journal_revocation();
