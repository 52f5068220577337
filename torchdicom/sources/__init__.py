"""Where bytes come from besides local files: fsspec URLs (object storage, HTTP, memory).

See :mod:`torchdicom.sources.remote`. fsspec and the provider packages load on first use.
"""

from torchdicom.sources.remote import (
    RemotePolicy,
    configure,
    is_remote,
    policy,
)

__all__ = ["RemotePolicy", "configure", "is_remote", "policy"]
