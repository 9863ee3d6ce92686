"""SimCam: a simulated LSSTCam-like camera (205 detectors), its header translator and a raw
file generator: the worked example of adding an instrument to obsbus.

Adding an instrument takes:

1. ``instrument.py``: an ``Instrument`` subclass naming its filters and detectors (plain
   data) and its translator class.
2. ``translator.py``: an astro_metadata_translator ``MetadataTranslator`` for its headers,
   declarative where possible (``_const_map``, ``_trivial_map``) plus a few ``to_*`` methods.
   Here one table of header cards (``CARDS``) drives both the translator and the generator.
3. An entry point in pyproject.toml, group ``obsbus.instruments``
   (``SimCam = "services.instruments.simcam:SimCam"``), so ``obsbus register-instrument REPO
   SimCam`` and raw ingest find it. Importing this package registers ``SimCamTranslator``
   with astro_metadata_translator.
4. Optionally commands: ``cli.py`` adds ``obsbus simcam generate`` (``generator.py``).
"""

from .generator import ExposureSpec, generate_night, plan_night, write_exposure
from .instrument import SimCam
from .translator import SimCamTranslator

__all__ = [
    "ExposureSpec",
    "SimCam",
    "SimCamTranslator",
    "generate_night",
    "plan_night",
    "write_exposure",
]
