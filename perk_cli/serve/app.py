"""The HTTP routes of `perk serve` (FastAPI; its OpenAPI page is /docs), over a `Service`.

    POST   /v1/memories               {"text", "name"?}             -> 202 {"id", "job"}
    POST   /v1/memories/{id}/append   {"text"}                      -> 202 {"id", "job"}
    GET    /v1/jobs/{job}                                           -> {"status", "progress", "error"?, ...}
    POST   /v1/memories/{id}/ask      {"question", "max_new_tokens"?} -> {"answer", "raw", "seconds"}
    GET    /v1/memories, GET /v1/memories/{id}, DELETE /v1/memories/{id}, GET /health

Every refusal is a 4xx with {"error": one line}: 400 a bad value, 401 no or a wrong bearer token (when the
server has one), 404 an unknown memory or job, 409 a memory of another checkpoint (or one a job is
writing), 411/413 a body without a length or over the limit, 422 a body of the wrong shape.
"""

from __future__ import annotations

import hmac

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import BaseModel, ConfigDict, Field

from perk_cli import __version__
from perk_cli.errors import PerkError
from perk_cli.serve.service import Busy, Incompatible, Service
from perk_cli.serve.store import BadMemoryId, UnknownMemory


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewMemory(_Body):
    text: str = Field(description="The document to remember.")
    name: str | None = Field(None, description="The memory's id (letters, digits, - _ .); default: a fresh one.")


class MoreText(_Body):
    text: str = Field(description="A document to add to the memory.")


class Question(_Body):
    question: str
    max_new_tokens: int | None = Field(None, ge=1, le=512)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(service: Service, token: str | None = None, max_body_bytes: int = 8 << 20) -> FastAPI:
    app = FastAPI(title="perk", version=__version__,
                  description="Memories of documents behind one loaded model: adapt, append, ask.")

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return _error(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
        if request.method in ("POST", "PUT", "PATCH"):
            length = request.headers.get("content-length")
            if length is None:
                return _error(411, "send the body with a Content-Length")
            if not length.isdigit() or int(length) > max_body_bytes:
                return _error(413, f"body of {length} bytes is over this server's limit of {max_body_bytes} "
                                   "(perk serve --max-body-mb)")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def bad_shape(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return _error(422, f"{where}: {first.get('msg', 'invalid').lower()}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:  # no route matched (an id with a '/' never reaches one)
            return _error(404, f"no route {request.method} {request.url.path}; memory ids are plain names "
                               "(letters, digits, - _ .)")
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(UnknownMemory)
    async def unknown(request: Request, exc: UnknownMemory):
        return _error(404, f"no memory {exc.args[0]!r} in the store")

    @app.exception_handler(BadMemoryId)
    async def bad_id(request: Request, exc: BadMemoryId):
        return _error(400, str(exc))

    @app.exception_handler(Incompatible)
    async def incompatible(request: Request, exc: Incompatible):
        return _error(409, str(exc))

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy):
        return _error(409, str(exc))

    @app.exception_handler(PerkError)
    async def refused(request: Request, exc: PerkError):
        return _error(400, str(exc))

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "perk_version": __version__, "checkpoint": service.origin.path,
                "fingerprint": service.origin.fingerprint, "base_model": service.runtime.config.model.name,
                "memories": len(service.store.ids()), "jobs_running": service.running()}

    @app.post("/v1/memories", status_code=202)
    def new_memory(body: NewMemory) -> dict:
        job = service.submit(body.text, body.name)
        return {"id": job.memory, "job": job.id}

    @app.post("/v1/memories/{memory_id}/append", status_code=202)
    def append(memory_id: str, body: MoreText) -> dict:
        job = service.submit(body.text, memory_id, append=True)
        return {"id": job.memory, "job": job.id}

    @app.get("/v1/jobs/{job_id}")
    def job(job_id: str):
        found = service.jobs.get(job_id)
        return found.view() if found else _error(404, f"no job {job_id!r}")

    @app.get("/v1/memories")
    def memories() -> dict:
        return {"memories": [service.describe(memory_id) for memory_id in service.store.ids()]}

    @app.get("/v1/memories/{memory_id}")
    def memory(memory_id: str) -> dict:
        return service.describe(memory_id)

    @app.delete("/v1/memories/{memory_id}", status_code=204)
    def delete(memory_id: str) -> None:
        service.delete(memory_id)

    @app.post("/v1/memories/{memory_id}/ask")
    def ask(memory_id: str, body: Question) -> dict:
        return service.ask(memory_id, body.question, body.max_new_tokens)

    return app
