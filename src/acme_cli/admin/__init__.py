"""Operator commands: `acme dead …`, `acme stats` and `acme trace`.

One concern per module:
  settings, clients          read once; connect, or one line naming the URL that failed
  deadletters                dead entries decoded (pure; reusable by metrics)
  deadstream, selection      bounded reads of the dead stream; what a replay/purge will touch
  inspect, stats, records    stream/group health (reusable), the `stats` snapshot, PostgreSQL
  audit, actions, interrupt  the audit trail; replay and purge through Lua; Ctrl-C handling
  trace                      one order's whole path
  render, render_ops         rich tables for people, stable JSON for scripts
  commands_dead, commands_replay, commands_ops   each command's flow
  handlers, cli              the sync edge (input checks, exit codes); argparse and help
"""
