-- Each write of a connection's tokens bumps `token_version`, so a refresh takes the lease only
-- while the token it judged stale is still the stored one (a replica that lost the race
-- takes the winner's token instead of refreshing again). `token_issued_at` is when the stored
-- access token was issued, so the refresh skew can be clamped to a share of its lifetime.
ALTER TABLE connections ADD COLUMN token_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE connections ADD COLUMN token_issued_at BIGINT;
