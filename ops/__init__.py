"""Operator tasks over a mirrored account: verify against the server, export to Maildir."""
