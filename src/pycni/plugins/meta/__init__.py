"""Meta plugins."""
