"""DICOMweb (PS3.18) over the stored canonical files: QIDO-RS search and WADO-RS retrieval.

The UIDs served are those of the stored files; what is searched is the catalog's index of them
(`db.models.DicomInstance`), filtered by what the caller may read; frames come from the same open
slides and positioned reads as tiles (`tiles.TileService`). The HTTP front is `api/dicomweb.py`.
"""
