"""cnnbench: a config-driven trainer for classic image-classification CNNs."""

__version__ = "0.1.0"
