"""Python SDK for the cpcnn embedding service (imports only httpx and numpy; tables come back as pandas
DataFrames, with pandas and pyarrow imported when the first one does).

    from cpcnn.client import Client
    with Client("http://127.0.0.1:8000", api_key=None) as client:
        cells = client.embed({"DNA": "dna.tif", "RNA": ..., "ER": ..., "AGP": ..., "Mito": ...},
                             "nuclei.csv", metadata={"plate": "P1", "well": "A01", "site": "1"})
"""

from cpcnn.client._async import AsyncClient
from cpcnn.client._base import RetryPolicy, Site
from cpcnn.client._errors import (
    ApiError,
    ConflictError,
    InputError,
    JobFailed,
    JobTimeout,
    MethodNotAllowed,
    NotAcceptable,
    NotFoundError,
    PayloadTooLarge,
    PlateFailed,
    RequestError,
    RequestTimeout,
    ServerError,
    TransportError,
    UnauthorizedError,
    UnavailableError,
    UnsupportedMedia,
)
from cpcnn.client._errors import (
    deprecated_name as _deprecated_name,
)
from cpcnn.client._sync import Client

__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "ConflictError",
    "InputError",
    "JobFailed",
    "JobTimeout",
    "MethodNotAllowed",
    "NotAcceptable",
    "NotFoundError",
    "PayloadTooLarge",
    "PlateFailed",
    "RequestError",
    "RequestTimeout",
    "RetryPolicy",
    "ServerError",
    "Site",
    "TransportError",
    "UnauthorizedError",
    "UnavailableError",
    "UnsupportedMedia",
]

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("cpcnn.client."):
        _obj.__module__ = "cpcnn.client"
del _name, _obj


def __getattr__(name: str) -> type[ApiError]:
    """The SDK's former exception names (``NotFound``, ``BadRequest``...) still resolve, with a warning."""
    return _deprecated_name(__name__, name)
