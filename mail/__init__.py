"""Provider-neutral message handling: header parsing, snippets, thread grouping."""
