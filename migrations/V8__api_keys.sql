-- API keys (SECURITY.md). A key's text is `tally_<id>_<secret>`; only the SHA-256 of the secret
-- is stored: the secret is 32 random bytes, so the digest cannot be searched back, and a slow
-- password hash would only cost CPU on every request. The name is a label (who holds it), not
-- unique: rotating a key creates a new one under the same name, then revokes the old one.
-- Revoked keys stay, so a transaction record's key name keeps meaning something.
CREATE TABLE api_keys (
    id uuid PRIMARY KEY,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 128),
    -- Texts of tally_core::auth::Scope.
    scopes text[] NOT NULL CHECK (cardinality(scopes) > 0
        AND scopes <@ ARRAY['transactions:write', 'ledger:read', 'admin']::text[]),
    digest bytea NOT NULL CHECK (length(digest) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- The name of the key that posted a transaction (who moved this money). NULL when auth was off
-- or the command came another way (`tally import --via queue`). Nullable without a default:
-- no table rewrite.
ALTER TABLE transactions ADD COLUMN key_name text;
