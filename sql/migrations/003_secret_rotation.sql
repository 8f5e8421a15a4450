-- Secret rotation. "grouphook endpoints rotate-secret" (or the admin API)
-- moves secret_key here and sets a new one; until previous_secret_expires_at
-- (now + GROUPHOOK_ROTATION_OVERLAP) webhook-signature carries one "v1,"
-- signature per secret, so receivers can switch without a missed callback.
-- x-hashed-key always uses secret_key. After expiry the previous secret is
-- ignored (the next rotation overwrites it).
ALTER TABLE grouphook.endpoints
    ADD COLUMN previous_secret_key        text NULL CHECK (previous_secret_key <> ''),
    ADD COLUMN previous_secret_expires_at timestamptz NULL,
    ADD CONSTRAINT endpoints_previous_secret_pair
        CHECK ((previous_secret_key IS NULL) = (previous_secret_expires_at IS NULL));
