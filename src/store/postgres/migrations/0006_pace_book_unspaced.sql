-- Calls a line holds no slot for: each replica's first call with a credential leaves before the replica knows
-- the account's spacing, so it takes no slot. The next reservation that knows the spacing places its slot one gap
-- further for each of them, as though they had taken slots of their own. Only calls noted in a burst count
-- (within a second of the line's latest slot or note); older ones have left the window they were counted in.
ALTER TABLE pace_book ADD COLUMN unspaced INTEGER NOT NULL DEFAULT 0;
