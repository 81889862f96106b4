"""The learning-dynamics engine: log-probs, probes, residual terms, influence and eNTK.

Nothing here imports the database: observations leave through an ObservationSink.
"""
