"""marsseg: semantic segmentation of Mars terrain in rover images."""

__version__ = "0.1.0"
