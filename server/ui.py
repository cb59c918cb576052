"""The web page at /ui: static files (server/static/) and the small JSON endpoints they read.

The page itself holds no secret, so GET /ui and /ui/static/* load without a key; everything
under /ui/api/ is data and follows the --api-key rule of /v1/* (app.APIKeyMiddleware). The page
asks for the key when /ui/api/info answers 401, keeps it in sessionStorage, and sends it as
`Authorization: Bearer` on its own fetches, exactly like any other client.

Each view of the page reads one JSON endpoint here; a new view is one more route on `router`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from nanovllm import __version__
from nanovllm.limits import MAX_LOGPROBS, MAX_N
from nanovllm.server.context import Ctx

STATIC_DIR = Path(__file__).parent / "static"
API_PREFIX = "/ui/api"  # the page's data: protected like /v1 when the server has an API key

# Only our own files, nothing inline, no framing: the page must work offline and a stray
# injected <script> must not run.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/ui")
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)


@router.get(f"{API_PREFIX}/info")
async def info(ctx: Ctx) -> dict:
    """What the page shows above the playground, and the limits its controls respect."""
    return {"model": ctx.model_name, "root": ctx.model_root, "is_dummy": ctx.engine_loop.is_dummy,
            "max_model_len": ctx.engine_loop.max_model_len,
            "vocab_size": ctx.engine_loop.vocab_size, "max_logprobs": MAX_LOGPROBS,
            "max_n": MAX_N, "version": __version__}


def install_ui(app: FastAPI) -> None:
    """Serve the page at /ui and its files at /ui/static (left out with --disable-ui)."""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
