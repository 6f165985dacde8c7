"""Helpers shared by the test suite (process runners, pytest fixture plugins)."""
