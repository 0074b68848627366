"""Scheduler wiring: expiry timers, sweeps."""
