"""Ingest: raw logs → events_bronze, events_silver and events_quarantine (entry: `stage.run`).

`readers` reads any supported format into canonical columns; `clean` holds the pure checks (reasons,
rules, sessions, bots); `stage` reads, merges and writes through the table layer and reconciles.
"""
