"""The SQLite store: schema and migrations, the single writer, and read-only queries."""
