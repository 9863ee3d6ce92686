"""The services: each module is one, its handler and its ``SERVICE`` declaration (the topics
it reads and writes, its consumer group and batch size; services/bus/declaration.py).

- ``watcher``: landing folders → RawArrival.
- ``ingest``: RawArrival → RegistryCommand (IngestRaw), or a failed IngestOutcome.
- ``registry``: RegistryCommand → RegistryEvent, IngestOutcome, CalibrationOutcome; the only
  writer of the registry (its answers: ``registry_answers``).
- ``calib``: BlessingRequest → RegistryCommand (CertifySuite), or a refused outcome.
- ``replay``: the registry handler over the command topic's history.

Handlers are plain callables from decoded messages to outgoing ones; the service loop
(services/bus/runner.py) does the rest. They sit above the library (registry, datastore,
ingest, calib) and the bus, and nothing below imports them.
"""
