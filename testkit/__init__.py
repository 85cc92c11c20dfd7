"""What the tests and the benchmarks share: payloads and config files, the service driven over
HTTP or as a child process, waiting on a condition, a recording adapter, and the real PostgreSQL.
Neither imports the other's modules; both import these."""
