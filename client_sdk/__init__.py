"""Device-side SDK of the sync gateway (durable outbox, resumable subscriptions)."""
