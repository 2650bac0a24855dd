"""Built-in input formats for ``xpkit ingest``; see ``xpkit.core.formats`` for the interface."""
