-- Which SMTP provider accepted each e-mail (primary, or the fallback of ACME_SMTP_FALLBACK_URL).
-- A constant default adds the column without rewriting the table, and rows written by a
-- notifier of the previous release (which names no provider) read `primary`: safe to run
-- before a rolling deploy.
ALTER TABLE notify.sent_ledger ADD COLUMN provider text NOT NULL DEFAULT 'primary';
