"""Target plugins shipped with the connector. Each registers itself by entry point."""
