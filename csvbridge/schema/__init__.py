"""The documented contract: pydantic models of the Commanders Act schema and the
per-column codecs compiled from them.  Every rule (length, enumeration, requirement,
bound) is written here once."""
