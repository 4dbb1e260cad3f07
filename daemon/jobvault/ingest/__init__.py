"""Ingest: watch the roots, tail files, feed the sessions, hand batches to the writer."""
