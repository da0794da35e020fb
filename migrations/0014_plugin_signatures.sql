-- Plugin signatures are kept with the plugin, so a host with trusted keys
-- checks every plugin when it loads it into a pipeline, not only at deploy
-- (a plugin deployed unsigned before signing was turned on must not run).
-- Hex ed25519 over the digest (see host/src/signing.rs); null: unsigned.
alter table payrail.plugins
    add column signature text check (signature ~ '^[0-9a-f]{128}$');
