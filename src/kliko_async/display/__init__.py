"""Consumers of run events: a rich live view, plain prefixed lines, JSON lines."""
