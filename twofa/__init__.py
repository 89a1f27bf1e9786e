"""Cockpit 2FA: the two-factor authentication engine of a cloud console."""
