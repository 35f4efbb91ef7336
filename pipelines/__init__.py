"""Ray Data jobs (backfill, re-embed, reconcile) over the same core as the online path."""
