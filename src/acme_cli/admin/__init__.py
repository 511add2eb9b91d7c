"""Operator commands: `acme dead …`, `acme stats` and `acme trace`.

Layout, one concern per module: `settings` (read once), `clients` (connect, or one clear line
naming the URL that failed), `deadletters` (decoding, pure) / `deadstream` / `selection` /
`inspect` / `stats` / `audit` / `records` (gathering data, no rendering; `inspect` and
`deadletters` are meant for reuse by metrics), `actions` (replay and purge, through Lua),
`trace` (one order's whole path), `render` / `render_ops` (rich tables and stable JSON),
`commands_dead` / `commands_ops` (each command's flow), `handlers` (the sync edge: input
checks, exit codes) and `cli` (argparse, help and examples).
"""
