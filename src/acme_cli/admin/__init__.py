"""Operator commands: `acme dead …`, `acme stats` and `acme trace`.

Layout, one concern per module: `settings` (read once), `clients` (connect, or one clear line
naming the URL that failed), `deadletters` / `inspect` / `audit` / `records` (gathering data,
no rendering; `inspect` and the dead-entry decoding are meant for reuse by metrics), `actions`
(replay and purge, through Lua), `trace` (one order's whole path), `render` / `render_ops`
(rich tables and stable JSON), `commands` (each command's flow) and `cli` (argparse).
"""
