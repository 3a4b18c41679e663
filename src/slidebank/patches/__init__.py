"""Training data from a node's slides: patch sampling, labels from annotations, PyTorch datasets,
and WebDataset export with provenance. Needs PyTorch (`pip install 'slidebank[train]'`)."""

from slidebank.patches.dataset import PatchDataset, PatchStream
from slidebank.patches.export import ExportError, export_webdataset
from slidebank.patches.labels import AnnotationLabeler
from slidebank.patches.sampling import Patch, Sampling, SamplingError

__all__ = ["AnnotationLabeler", "ExportError", "Patch", "PatchDataset", "PatchStream", "Sampling", "SamplingError",
           "export_webdataset"]
