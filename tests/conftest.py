"""Shared pytest configuration: fixtures live in tests/plugins/, one module per kind of server."""

pytest_plugins = ["tests.plugins.api", "tests.plugins.servers"]
