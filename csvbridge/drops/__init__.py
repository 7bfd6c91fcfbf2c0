"""Drops: where files arrive and how they move (claim -> process -> done/failed), the
ledger that remembers what was shipped, the pass lock, the cron pass and the daemon."""
