"""csvbridge: e-commerce order exports (CSV) into the Commanders Act conversions API."""

__version__ = "0.1.0"
