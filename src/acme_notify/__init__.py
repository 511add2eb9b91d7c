"""The notifier: turns order events on the Redis Stream into confirmation e-mails.

Owns its consumer group on the events stream, the dead-letter stream, the send ledger (schema
`notify` in PostgreSQL) and the receipts it publishes. It never reads the order service's tables:
the event envelope carries everything the e-mail needs.
"""
