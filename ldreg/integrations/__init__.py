"""Bridges from other people's training loops into ldreg's probes, runs and database.

Each submodule imports a third-party trainer library (``ldreg[trl]``); nothing in ldreg's core
imports this package, so the core never needs those libraries.
"""
