"""Fake PHI: the identifiers a slide carries, and the label and macro photos that show them.

Every slide gets a deterministic fake identity (name, MRN, accession, operator, scan date) so
de-identification can be tested against the exact strings it must remove (`Phi.strings`); the
label and macro images burn the same text into pixels.
"""

from __future__ import annotations

import datetime as _dt
import random
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from slidebank.synth.tissue import BACKGROUND

LABEL_SIZE = (400, 400)
MACRO_SIZE = (1280, 431)

_LAST_NAMES = (
    "DOE", "ROE", "MUSTERMANN", "KOWALSKI", "NGUYEN", "HERNANDEZ", "OKAFOR", "LINDQVIST",
    "TANAKA", "MORETTI", "DUBOIS", "PETROVA", "OSULLIVAN", "ACHTERBERG", "FONSECA", "HALVORSEN",
)
_FIRST_NAMES = (
    "JANE", "JOHN", "ERIKA", "MAX", "ANNA", "LUIS", "CHIDI", "ASTRID",
    "YUKI", "GIULIA", "CAMILLE", "OLGA", "SEAN", "MAARTEN", "BEATRIZ", "INGRID",
)
_OPERATORS = ("mkowalczyk", "tnguyen", "ahernandez", "pwellington", "rokafor", "slindgren", "dbrennan")


@dataclass(frozen=True)
class Phi:
    """The fake identifiers one slide carries; derived from the label text where it has them."""

    patient_name: str
    mrn: str
    accession: str
    filename: str
    operator: str
    date: str
    time: str

    def strings(self, label_text: str) -> tuple[str, ...]:
        found: list[str] = []
        for item in (label_text, self.patient_name, self.mrn, self.accession, self.filename, self.operator, self.date):
            if item and item not in found:
                found.append(item)
        return tuple(found)


def default_label_text(seed: int) -> str:
    """A realistic fake label ("LAST^FIRST MRN:12345678 S26-4711"), deterministic from the seed."""
    rng = random.Random(f"slidebank-label-{seed}")
    last = rng.choice(_LAST_NAMES)
    first = rng.choice(_FIRST_NAMES)
    mrn = f"{rng.randrange(10_000_000, 100_000_000)}"
    accession = f"S{rng.randrange(18, 27):02d}-{rng.randrange(1000, 99999)}"
    return f"{last}^{first} MRN:{mrn} {accession}"


def make_phi(label_text: str, seed: int) -> Phi:
    """Take name/MRN/accession from the label when present, else from the seed's fake identity."""
    fallback = default_label_text(seed).split()
    name = fallback[0]
    mrn = fallback[1].split(":", 1)[1]
    accession = fallback[2]
    for token in label_text.split():
        if "^" in token:
            name = token
        elif token.upper().startswith("MRN:") and len(token) > 4:
            mrn = token[4:]
        elif re.fullmatch(r"[A-Z]{1,3}\d{2}-\d{2,}", token):
            accession = token
    rng = random.Random(f"slidebank-phi-{seed}")
    operator = f"{rng.choice(_OPERATORS)}{rng.randrange(10, 99)}"
    when = _dt.datetime(2024, 1, 1, 7, 0, 0) + _dt.timedelta(
        days=rng.randrange(0, 800), seconds=rng.randrange(0, 11 * 3600)
    )
    filename = "_".join(part for part in re.split(r"[^A-Za-z0-9-]+", name) if part) + f"_{accession}"
    return Phi(
        patient_name=name,
        mrn=mrn,
        accession=accession,
        filename=filename,
        operator=operator,
        date=when.strftime("%m/%d/%y"),
        time=when.strftime("%H:%M:%S"),
    )


# --------------------------------------------------------------------------------------------
# Label and macro images
# --------------------------------------------------------------------------------------------


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: bitmap font, scaled by the caller
        return ImageFont.load_default()


def render_label(label_text: str, barcode: str) -> np.ndarray:
    """A slide label photo: printed text lines plus a fake 1-D barcode of `barcode`."""
    w, h = LABEL_SIZE
    image = Image.new("RGB", (w, h), (248, 247, 240))
    draw = ImageDraw.Draw(image)
    draw.rectangle([4, 4, w - 5, h - 5], outline=(200, 200, 195), width=2)
    lines = label_text.split() or [label_text]
    size = 34
    font = _font(size)
    top = 18
    for line in lines[:6]:
        while size > 12 and draw.textlength(line, font=font) > w - 30:
            size -= 2
            font = _font(size)
        draw.text((16, top), line, fill=(20, 20, 30), font=font)
        top += size + 10
    # Code-39-like bars derived from the barcode text, so different slides get different patterns.
    rng = random.Random(f"barcode-{barcode}")
    x = 24
    bar_top, bar_bottom = max(top + 10, h - 130), h - 40
    while x < w - 30:
        bar = rng.choice((2, 2, 3, 5))
        draw.rectangle([x, bar_top, x + bar - 1, bar_bottom], fill=(10, 10, 10))
        x += bar + rng.choice((2, 3, 4))
    draw.text((24, bar_bottom + 6), barcode, fill=(20, 20, 30), font=_font(18))
    pixels = np.asarray(image, dtype=np.float32)
    # a hint of camera noise so it looks photographed; seeded from the text, so deterministic
    noise = np.random.default_rng(sum(barcode.encode())).normal(0, 2.0, pixels.shape)
    return np.clip(pixels + noise, 0, 255).astype(np.uint8)


def render_macro(overview: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Macro camera photo of the whole glass slide: label on the left, tissue overview on the right."""
    w, h = MACRO_SIZE
    macro = Image.new("RGB", (w, h), (214, 216, 218))
    label_w = h
    macro.paste(Image.fromarray(label).resize((label_w - 20, h - 20), Image.Resampling.BILINEAR), (10, 10))
    area_w, area_h = w - label_w - 40, h - 40
    ov = Image.fromarray(overview)
    scale = min(area_w / ov.width, area_h / ov.height)
    ov = ov.resize((max(1, int(ov.width * scale)), max(1, int(ov.height * scale))), Image.Resampling.BILINEAR)
    # glass is a bit darker than the scanner's white background; tint the overview to match
    ov_px = np.asarray(ov, dtype=np.float32) * (216.0 / BACKGROUND)
    ov = Image.fromarray(np.clip(ov_px, 0, 255).astype(np.uint8))
    macro.paste(ov, (label_w + 20 + (area_w - ov.width) // 2, 20 + (area_h - ov.height) // 2))
    return np.asarray(macro)
