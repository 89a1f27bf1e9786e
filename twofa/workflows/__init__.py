"""Temporal workflows: decide, wait and time out; never any I/O."""
