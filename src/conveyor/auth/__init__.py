"""Principals, API tokens, the trusted proxy header and permissions."""
