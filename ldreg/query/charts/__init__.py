"""Altair chart builders, one module per family of the paper's figures."""
