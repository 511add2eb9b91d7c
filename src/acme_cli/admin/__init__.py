"""Operator commands: `acme dead …`, `acme stats` and `acme trace`.

One concern per module:
  settings, clients    read once; connect, or one line naming the URL that failed
  errors               the ways a command ends badly, each with its exit code
  deadletters          dead entries decoded (pure; reusable by metrics)
  deadstream           bounded reads of the dead stream; what a replay/purge will touch
  archive              the dead stream and its PostgreSQL archive together: merged reads
  archive_actions      replay and purge of archived entries
  health, records      stream/group health (reusable) and the `stats` snapshot; PostgreSQL
  actions              replay and purge through Lua, Ctrl-C handling; the audit trail
  trace                one order's whole path
  render               rich tables for people, stable JSON for scripts
  commands_dead, commands_replay, commands_ops   each command's handler next to its flow
  edge, cli            the sync edge (input checks, exit codes); argparse and help

A command takes one hop: cli.py's argparse handler imports its command module when it runs
and calls `run_<command>`, which checks the input and runs the async flow beside it.
"""
