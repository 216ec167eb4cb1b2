"""The web console: one static page and its script and style, served by the API process at ``/ui``.

The files carry no data, so they are served without the API key (the page asks for the key and sends
it with every API call it makes); everything the console shows comes from the public ``/v1`` API. A
strict Content-Security-Policy allows only this origin's scripts and styles, so even a value that
slipped past the page's escaping could not run. The bundled example site (a source checkout's
``examples/data``) is offered as static files when present.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse

from cpcnn.errors import NotFoundError

router = APIRouter(include_in_schema=False)

ASSETS = Path(__file__).resolve().parents[1] / "ui"
#: The console's files and their media types (nothing else under /ui is served).
_MEDIA = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "app.css": "text/css; charset=utf-8", "favicon.svg": "image/svg+xml"}
#: The real sample site, when the server runs from a source checkout.
EXAMPLE_DIR = Path(__file__).resolve().parents[3] / "examples" / "data" / "pcatlas-BR00143976-C03-s3"
EXAMPLE_CHANNELS = {"DNA": "r03c03f03p01-ch5sk1fk1fl1.tiff", "RNA": "r03c03f03p01-ch6sk1fk1fl1.tiff",
                    "ER": "r03c03f03p01-ch2sk1fk1fl1.tiff", "AGP": "r03c03f03p01-ch3sk1fk1fl1.tiff",
                    "Mito": "r03c03f03p01-ch4sk1fk1fl1.tiff"}
EXAMPLE_LOCATIONS = "r03c03f03p01-Nuclei.csv"
_EXAMPLE_FILE = re.compile(r"r03c03f03p01-[A-Za-z0-9_]+\.(tiff|csv)")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-cache"}


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=307)  # relative: never echoes the Host header


@router.get("/ui")
async def console() -> FileResponse:
    return _asset("index.html")


@router.get("/ui/example")
async def example() -> JSONResponse:
    """Which files make the bundled example site (404 when the server has none)."""
    if not (EXAMPLE_DIR / EXAMPLE_LOCATIONS).is_file():
        raise NotFoundError("this server has no bundled example site")
    files = {name: f"/ui/example/{file}" for name, file in EXAMPLE_CHANNELS.items()}
    return JSONResponse({"name": "BR00143976 C03 site 3 (DAOY, Opera Phenix 20x)", "plate": "BR00143976",
                         "well": "C03", "site": "3", "channels": files,
                         "locations": f"/ui/example/{EXAMPLE_LOCATIONS}"}, headers=HEADERS)


@router.get("/ui/example/{name}")
async def example_file(name: str) -> FileResponse:
    path = EXAMPLE_DIR / name
    if not _EXAMPLE_FILE.fullmatch(name) or not path.is_file():
        raise NotFoundError("no such example file")
    media = "text/csv" if name.endswith(".csv") else "image/tiff"
    return FileResponse(path, media_type=media, headers=HEADERS)


@router.get("/ui/{name}")
async def asset(name: str) -> FileResponse:
    return _asset(name)


def _asset(name: str) -> FileResponse:
    if name not in _MEDIA:
        raise NotFoundError(f"the console has no file {name[:40]!r}")
    return FileResponse(ASSETS / name, media_type=_MEDIA[name], headers=HEADERS)
