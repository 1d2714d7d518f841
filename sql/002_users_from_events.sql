-- The archiver records each user's earliest event in `users` from this release on; users of
-- events archived before it are filled in once here.
INSERT INTO users (user_id, first_seen)
SELECT user_id, min(event_time) FROM events GROUP BY user_id
ON CONFLICT (user_id) DO UPDATE SET first_seen = EXCLUDED.first_seen
    WHERE EXCLUDED.first_seen < users.first_seen;
