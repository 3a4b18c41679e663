"""Slidebank: collect, share and process whole-slide images without breaking patient privacy."""

__version__ = "0.1.0"
