"""devkit package."""
