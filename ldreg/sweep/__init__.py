"""Sweeps: a grid of experiments stored in the database, each config an ordinary tracked run.

definition  a base spec and each config's overrides, from --grid axes or a sweep YAML; validated
store       the sweep document and its claimable config entries (atomic claims, expiring leases)
worker      claim a config, run or resume it through the runner, record it; every executor calls it
executor    the executor contract (plugins: ldreg_register_executors), loopback refusal, extras
launch      store or find a sweep, requeue what failed, hand it to an executor, draw progress
status      done / running / failed / queued, run ids, elapsed and time left (no torch)
analysis    a stage's change against a swept axis, seeds pooled, one line per loss (query layer)
cli         `ldreg sweep run | status | list | chart`
"""
