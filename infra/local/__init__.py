"""Local mode: the real Lambda handlers on one machine, with AWS emulated by moto."""
