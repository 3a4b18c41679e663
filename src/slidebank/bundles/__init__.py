"""BIGPICTURE submission bundles: a dataset as MetaFleX 2.0 XML, DICOM files and GeoJSON.

`export` writes the layout of BIGPICTURE's submission guide (METADATA/, IMAGES/, ANNOTATIONS/,
LANDING_PAGE/, PRIVATE/) with checksums, each XML file validated against the MetaFleX XSDs
(`schemas`) before the export counts as done.
"""
