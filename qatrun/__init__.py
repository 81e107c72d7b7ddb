"""qatrun: quantization-aware training of CNNs from N2D2-style INI files, down to an integer-only network."""

__version__ = "0.1.0"
