"""Benchmarks of Cockpit 2FA against the floor of the engine underneath (``make bench``).

Not part of ``make test``: ``python -m bench`` starts its own private stack (Temporal dev server
with the embedded default's flags, SMTP sink, worker, API) on free loopback ports, runs each
benchmark and prints one table per benchmark. See ``python -m bench --help``.
"""
