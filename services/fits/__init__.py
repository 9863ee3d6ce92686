"""FITS primitives shared by ingest and the instruments: no translation, no registry.

- ``hdus``: a file's structure read from its 2880-byte header blocks (``Hdu``, ``read_hdus``,
  each HDU's data size checked against what its header declares).
- ``cards``: header cards parsed into a plain mapping (``FitsHeader``, ``parse_cards``).

This package imports only ``services.core`` (and astropy), so ``services.ingest`` and
``services.instruments`` can both use it without importing each other.
"""
