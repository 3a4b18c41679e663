"""The tamper-evident audit log: every read of pixels or metadata and every change, hash-chained."""

from slidebank.audit.log import AuditLog, ChainCheck

__all__ = ["AuditLog", "ChainCheck"]
