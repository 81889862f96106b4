"""Fixtures for the real MongoDB-protocol server (SecantusDB, started once per test session)."""
