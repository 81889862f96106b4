"""Persistence: the embedded MongoDB server, connections, observation documents, the spool.

server       SecantusDB as a child process: start / stop / status / ensure_running
collections  every collection name (observations, Sacred's runs/metrics, the query caches), once
connection   which MongoDB (LDREG_MONGO_URL or the embedded one), redaction, connect()
documents    ObservationBucket: one document per run, step, probing set and response type
sink         StoreSink: observations written in the background, spooled through outages
spool        the JSON-lines spool and flush_all (`ldreg db flush`: observations, metrics, run status)
metrics      Sacred's metric series written exactly once (journaled, skipping stored steps)
runs         listing, showing, deleting past runs; DEAD runs; run ids never reused
"""
