"""Whole commands as a user runs them, as processes: `shipyard` children, the demo, SIGKILLs.
Marked `integration` and `slow` by tests/conftest.py."""
