"""Persistence: table definitions, pynamodb models and the repositories built on them."""
