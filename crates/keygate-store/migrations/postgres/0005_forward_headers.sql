-- Request headers an integration has forwarded besides the proxy's allow-list: a JSON array
-- of lower-case header names (NULL: none).
ALTER TABLE integrations ADD COLUMN forward_headers TEXT;
