"""The team vault: each machine's job records pushed to one PostgreSQL database, and reports
over all of them.

`connect` (URLs, libpq's passwords and TLS, errors in one line) → `schema` (the server's named
migrations) → `vault` (what changed in the local database, read-only, and what of it may leave
the machine: `privacy`) → `sync` (the push: one transaction per batch with its
acknowledgement) → `pusher` (the daemon's background push). `reports` answers the `stats` and
`jobs` methods from the team database in the shapes of the local ones. See docs/team.md.
"""
