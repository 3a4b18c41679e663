"""The demo collection: a few synthetic slides from humans and laboratory animals, with a sidecar.

Used by `make demo` and by tests that need a realistic small batch (several stains, organs, species,
two datasets, one subject with two slides).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import cast

from slidebank.synth.generator import write_synthetic_slide
from slidebank.synth.layout import Vendor
from slidebank.synth.tissue import Stain

DEMO_SLIDES: tuple[dict[str, str], ...] = (
    {"file": "breast-he-1.svs", "dataset": "human-oncology", "subject": "PAT-0001", "species": "human",
     "sex": "female", "age_at_extraction": "P54Y", "anatomical_site": "breast", "specimen_type": "biopsy",
     "fixation_type": "formalin", "block_preparation": "paraffin", "stain": "H&E",
     "diagnosis": "invasive ductal carcinoma", "vendor": "aperio", "tissue": "HE"},
    {"file": "breast-ki67-1.svs", "dataset": "human-oncology", "subject": "PAT-0001", "species": "human",
     "sex": "female", "age_at_extraction": "P54Y", "anatomical_site": "breast", "specimen_type": "biopsy",
     "fixation_type": "formalin", "block_preparation": "paraffin", "stain": "Ki-67",
     "diagnosis": "invasive ductal carcinoma", "vendor": "aperio", "tissue": "IHC"},
    {"file": "colon-he-2.svs", "dataset": "human-oncology", "subject": "PAT-0002", "species": "human",
     "sex": "male", "age_at_extraction": "P67Y", "anatomical_site": "colon", "specimen_type": "resection",
     "fixation_type": "formalin", "block_preparation": "paraffin", "stain": "H&E",
     "diagnosis": "adenocarcinoma", "vendor": "aperio", "tissue": "HE"},
    {"file": "lung-he-3.tiff", "dataset": "human-oncology", "subject": "PAT-0003", "species": "human",
     "sex": "male", "age_at_extraction": "P71Y", "anatomical_site": "lung", "specimen_type": "resection",
     "fixation_type": "formalin", "block_preparation": "paraffin", "stain": "H&E",
     "diagnosis": "squamous cell carcinoma", "vendor": "generic", "tissue": "HE"},
    {"file": "rat-liver-he-101.svs", "dataset": "rat-toxicology", "subject": "RAT-101", "species": "rat",
     "sex": "male", "age_at_extraction": "P10W", "anatomical_site": "liver", "specimen_type": "necropsy",
     "fixation_type": "formalin", "block_preparation": "paraffin", "stain": "H&E",
     "diagnosis": "hepatocellular hypertrophy", "vendor": "aperio", "tissue": "HE"},
    {"file": "mouse-kidney-he-202.svs", "dataset": "rat-toxicology", "subject": "MOUSE-202", "species": "mouse",
     "sex": "female", "age_at_extraction": "P8W", "anatomical_site": "kidney", "specimen_type": "necropsy",
     "fixation_type": "formalin", "block_preparation": "paraffin", "stain": "H&E",
     "diagnosis": "no abnormality detected", "vendor": "aperio", "tissue": "HE"},
)
SIDECAR_COLUMNS = (
    "file", "dataset", "subject", "species", "sex", "age_at_extraction", "anatomical_site", "specimen_type",
    "fixation_type", "block_preparation", "stain", "diagnosis",
)


def write_demo_collection(folder: Path, size: int = 6000) -> Path:
    """Write the demo slides and `metadata.csv` into `folder`; return the sidecar's path."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed, row in enumerate(DEMO_SLIDES):
        path = folder / row["file"]
        if not path.exists():
            write_synthetic_slide(
                path,
                size + 317 * seed,
                size - 211 * seed,
                # rows are plain str dicts (they also feed the CSV sidecar); the values above are valid literals
                vendor=cast(Vendor, row["vendor"]),
                seed=seed,
                stain=cast(Stain, row["tissue"]),
            )
    sidecar = folder / "metadata.csv"
    with open(sidecar, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SIDECAR_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(DEMO_SLIDES)
    return sidecar
