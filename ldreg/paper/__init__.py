"""The paper-reproduction app: the main job (`ldreg demo`), its pre-registered findings, report,
the base model it pretrains, its fortune-based preference data and the two exact simulations.

It is built on the library core (spec, registry, engine, store, query) exactly as a user's own study
would be; nothing in the core imports it except to resolve the names it provides.
"""
