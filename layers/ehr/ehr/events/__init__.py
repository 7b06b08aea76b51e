"""Platform events on EventBridge: bus, rule patterns and event shapes (ids only, never PHI)."""
