"""Erasure on request (GDPR art. 17): a data subject's slides, metadata and derived results go, provably."""

from slidebank.erasure.service import ErasureReport, Erasures

__all__ = ["ErasureReport", "Erasures"]
