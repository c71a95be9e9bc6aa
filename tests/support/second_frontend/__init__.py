"""Test-only ComfyUI custom node: the same server also serves a second frontend build, to browsers that carry the
cookie `dragedit_frontend=<version>`, exactly as `--front-end-root` serves its directory (static files, "/" is
index.html), inside ComfyUI's own middlewares (cache control, the CSP that keeps the page off the network).

Why: one server for both frontends shares ComfyUI's output cache, so an example queued from the second frontend
(the same prompt, checked equal) costs seconds instead of a second full run. The flag itself is exercised by
tests/browser/test_frontend.py, which checks that a real --front-end-root server serves the same files.
"""
import os
import pathlib

from aiohttp import web

import server

COOKIE = "dragedit_frontend"
VERSION = os.environ.get("DRAGEDIT_SECOND_FRONTEND_VERSION")
ROOT = pathlib.Path(os.environ["DRAGEDIT_SECOND_FRONTEND_ROOT"]).resolve() \
    if os.environ.get("DRAGEDIT_SECOND_FRONTEND_ROOT") else None


@web.middleware
async def serve_second_frontend(request, handler):
    if ROOT and request.method in ("GET", "HEAD") and request.cookies.get(COOKIE) == VERSION:
        path = (ROOT / (request.path.lstrip("/") or "index.html")).resolve()
        if path.is_file() and ROOT in path.parents:
            return web.FileResponse(path)
    return await handler(request)


server.PromptServer.instance.app.middlewares.append(serve_second_frontend)
NODE_CLASS_MAPPINGS = {}
