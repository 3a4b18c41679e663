"""Synthetic whole-slide images with real vendor layouts, tissue-like pixels and fake PHI."""

from slidebank.synth.generator import (
    SyntheticSlide,
    default_label_text,
    tissue_mask,
    write_large_slide_from_tile,
    write_synthetic_slide,
)

__all__ = [
    "SyntheticSlide",
    "default_label_text",
    "tissue_mask",
    "write_large_slide_from_tile",
    "write_synthetic_slide",
]
