"""A small FastAPI service on Hearth's asyncio API: a warm container per request, or per conversation.

Why it is here: most apps that drive the code interpreter are asyncio services. This one shows the
whole life of ``AsyncHearthPools`` in such an app: made at start-up and closed at shutdown by the
FastAPI lifespan (kept on ``app.state``, no module globals), a lease per request with ``async with
pools.leased(...)`` that never blocks the event loop, and the official ``AsyncOpenAI`` client (pointed
at the configured API: ``HEARTH_API_BASE``/``HEARTH_API_KEY``) talking to the leased container.

``POST /files`` (multipart: ``file``, optional ``pool``, optional ``conversation``) puts the uploaded
file into a container and answers with what the container holds. Without ``conversation`` the
container is leased for this request and released at the end (Hearth harvests its files to storage
and retires it on the workers). With ``conversation`` it is the conversation's container
(``AsyncSessions``): the next request with the same key finds the same container and its files;
``POST /conversations/{key}/end`` harvests a last time and retires it.

Run (with ``hearth up`` running, or Redis, a worker and an API configured by HEARTH_* variables)::

    uvicorn examples.fastapi_app:create_app --factory --port 8000
    curl -F file=@examples/data/sales.csv http://127.0.0.1:8000/files
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Form, HTTPException, Request, UploadFile
from openai import AsyncOpenAI

from hearth.errors import HearthError, PoolEmpty
from settings import Settings
from tasks.async_pools import AsyncHearthPools

log = logging.getLogger("hearth.example")

DEFAULT_POOL = "analysts"


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service; ``settings`` default to the HEARTH_* environment, read at start-up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        conf = settings or Settings()
        pools = AsyncHearthPools.from_settings(conf)
        key = conf.api_key.get_secret_value() if conf.api_key is not None else "unused"  # the local API needs none
        client = AsyncOpenAI(base_url=conf.resolved_api_base, api_key=key, max_retries=2)
        app.state.pools, app.state.sessions, app.state.openai = pools, pools.sessions(), client
        log.warning("hearth example: pools open")
        try:
            yield
        finally:
            await client.close()
            await pools.aclose()
            log.warning("hearth example: pools closed")

    app = FastAPI(title="Hearth example", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/files")
    async def put_file(
        request: Request,
        file: UploadFile,
        pool: Annotated[str, Form()] = DEFAULT_POOL,
        conversation: Annotated[str | None, Form()] = None,
    ) -> dict[str, Any]:
        state = request.app.state
        data = await file.read()
        name = file.filename or "upload.bin"
        try:
            if conversation:
                turn = await state.sessions.lease(pool, conversation)
                files = await upload_and_list(state.openai, turn.container_id, name, data)
                return {"container_id": turn.container_id, "files": files, "released": False,
                        "session_id": turn.session_id, "restored": turn.restored}
            async with state.pools.leased(pool) as lease:
                files = await upload_and_list(state.openai, lease.container_id, name, data)
            return {"container_id": lease.container_id, "files": files, "released": True}
        except PoolEmpty as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from None
        except HearthError as exc:
            raise HTTPException(status_code=503 if exc.temporary else 400, detail=str(exc)) from None

    @app.post("/conversations/{conversation}/end")
    async def end(request: Request, conversation: str) -> dict[str, Any]:
        ended = await request.app.state.sessions.end_session(conversation)
        return ended.to_json()

    return app


async def upload_and_list(client: AsyncOpenAI, container_id: str, name: str, data: bytes) -> list[dict[str, Any]]:
    """Put one file into the container, then list everything it holds (the official SDK, async)."""
    await client.containers.files.create(container_id, file=(name, data))
    return [{"id": f.id, "path": f.path, "bytes": f.bytes, "source": f.source}
            async for f in client.containers.files.list(container_id)]
