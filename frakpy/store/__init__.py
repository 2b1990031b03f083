"""Durable state: SQLite database of sandboxes, containers, images and runtime settings."""
