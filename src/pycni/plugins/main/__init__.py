"""Main plugins."""
