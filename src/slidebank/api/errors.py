"""One place that turns domain errors into HTTP answers: clean 4xx, never a 500 for bad input."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from iiif.error import IIIFError

from slidebank.access.errors import AccessError, NotAllowed, NotFound, SlideNotFound, TooManyAttempts
from slidebank.annotations.geojson import AnnotationError
from slidebank.annotations.service import AnnotationNotFound, NotAuthor
from slidebank.api.tiles import (
    CORS,  # IIIF clients must be able to read error answers too
)
from slidebank.tiles.deepzoom import TileNotFound


def _not_found(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(error) or "not found"}, status_code=404, headers=CORS)


def _iiif_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, IIIFError)
    status = error.code if error.code in (400, 404, 501) else 400
    return JSONResponse({"detail": error.text, "parameter": error.parameter}, status_code=status, headers=CORS)


def _invalid_request(request: Request, error: Exception) -> JSONResponse:
    """A malformed path names nothing that exists (404); malformed query or body is a 400."""
    assert isinstance(error, RequestValidationError)
    errors = error.errors()
    in_path = any(e.get("loc", ("",))[0] == "path" for e in errors)
    detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in errors]
    return JSONResponse({"detail": detail}, status_code=404 if in_path else 400, headers=CORS)


def _access_error(request: Request, error: Exception) -> JSONResponse:
    if isinstance(error, TooManyAttempts):
        return JSONResponse({"detail": str(error)}, status_code=429, headers={"Retry-After": str(error.retry_after)})
    status = 403 if isinstance(error, NotAllowed) else 404 if isinstance(error, NotFound) else 400
    return JSONResponse({"detail": str(error)}, status_code=status)


def _bad_value(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=400)


def _forbidden(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=403)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AnnotationError, _bad_value)
    app.add_exception_handler(AnnotationNotFound, _not_found)
    app.add_exception_handler(NotAuthor, _forbidden)
    app.add_exception_handler(AccessError, _access_error)
    app.add_exception_handler(SlideNotFound, _not_found)
    app.add_exception_handler(TileNotFound, _not_found)
    app.add_exception_handler(IIIFError, _iiif_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
