"""Every table of a node, on one declarative base; importing this registers them all.

Models live together at the bottom of the package graph so that domain packages only ever import
downwards, and foreign keys between capabilities (grants → datasets, tasks → images, facts → jobs)
always resolve, whichever service a process happens to use.
"""

from slidebank.db.models.access import (
    ROLES,
    AccessRequest,
    ApiToken,
    BrowserSession,
    CommitteeMember,
    DatasetSteward,
    Erasure,
    GovernanceState,
    Grant,
    LoginFailure,
    Notification,
    PseudonymEntry,
    User,
)
from slidebank.db.models.annotations import AnnotationFeature, Heatmap
from slidebank.db.models.audit import AuditEvent
from slidebank.db.models.base import Base, CatalogObject, iso_utc, new_uuid, utcnow
from slidebank.db.models.blobs import PendingBlob
from slidebank.db.models.catalog import (
    Annotation,
    BiologicalBeing,
    Block,
    Case,
    Dataset,
    Image,
    ImageFacet,
    ImageFile,
    ImageLevel,
    Observation,
    Observer,
    Organisation,
    Policy,
    Slide,
    SlideFact,
    Specimen,
    Staining,
    block_specimens,
    slide_stainings,
)
from slidebank.db.models.dicom import DicomInstance
from slidebank.db.models.jobs import Job, JobTask
from slidebank.db.models.search import CatalogChange, SearchState

__all__ = [
    "AccessRequest",
    "Annotation",
    "AnnotationFeature",
    "ApiToken",
    "AuditEvent",
    "Base",
    "BiologicalBeing",
    "Block",
    "BrowserSession",
    "Case",
    "CatalogChange",
    "CatalogObject",
    "CommitteeMember",
    "Dataset",
    "DatasetSteward",
    "DicomInstance",
    "Erasure",
    "GovernanceState",
    "Grant",
    "Heatmap",
    "Image",
    "ImageFacet",
    "ImageFile",
    "ImageLevel",
    "Job",
    "JobTask",
    "LoginFailure",
    "Notification",
    "Observation",
    "PendingBlob",
    "Observer",
    "Organisation",
    "Policy",
    "PseudonymEntry",
    "ROLES",
    "SearchState",
    "Slide",
    "SlideFact",
    "Specimen",
    "Staining",
    "User",
    "block_specimens",
    "iso_utc",
    "new_uuid",
    "slide_stainings",
    "utcnow",
]
