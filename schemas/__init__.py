"""Avro schemas of every obsbus message: the schema registry of the bus.

One file per record type and version, ``<Record>.v<N>.avsc`` (namespace ``obsbus``). Every
version is kept forever: readers look up a message's writer schema by its fingerprint, and
writers use the highest version. ``services.bus.codec`` loads them; ``tests/test_schemas.py``
checks every version against all earlier ones for compatibility.
"""
