-- Cipher passphrases of encrypted repositories. No foreign key to databases on purpose:
-- repositories outlive a deleted database, and so must the keys that open them.
CREATE TABLE repository_keys (
    database_id    text NOT NULL,
    repository_id  text NOT NULL,
    cipher_pass    text NOT NULL,          -- encrypted at rest
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (database_id, repository_id)
);
