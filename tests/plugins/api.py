"""pytest fixtures (api)."""
