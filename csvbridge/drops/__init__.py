"""Drops: where files arrive and how they move (claim -> process -> done/failed).

In pass order: `runner` (one pass for cron), `daemon` (the watch loop), `filing` (one
file from claim to filed away), `stages` (stage folders and safe names), `ledger` and
`ledger_rows` (what was shipped, who holds a file; backends `ledger_sqlite`,
`ledger_pg`, rules in `ledger_base` and `ledger_leases`), `replicas` (heartbeat and
per-token shipping lease among replicas), `lock` (the pass lock, process identities),
`outcome` (the typed results a pass returns)."""
