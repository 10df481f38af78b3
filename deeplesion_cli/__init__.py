"""lesion: benchmark CT lesion detectors on NIH DeepLesion under one protocol."""

__version__ = "0.1.0"
