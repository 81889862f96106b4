"""Persistence: the embedded MongoDB server, connections, observation documents, the spool."""
