"""Ray Data jobs (backfill, re-embed, reconcile) over the same engine as the online path."""
