"""providers/imap package."""
