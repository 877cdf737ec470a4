"""Process-level plumbing: the Temporal client, the embedded dev services."""
