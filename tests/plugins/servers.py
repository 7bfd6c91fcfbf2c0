"""pytest fixtures (servers)."""
