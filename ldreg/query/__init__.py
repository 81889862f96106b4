"""The query layer: select runs, aggregate observations in the database, draw comparisons."""
