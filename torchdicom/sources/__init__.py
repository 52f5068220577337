"""Where bytes come from besides local files: fsspec URLs (object storage, HTTP, memory)
and DICOMweb servers.

See :mod:`torchdicom.sources.remote` and :mod:`torchdicom.sources.dicomweb`. fsspec, the
provider packages and requests load on first use.
"""

from torchdicom.sources.dicomweb import DicomWebSource
from torchdicom.sources.remote import (
    RemotePolicy,
    configure,
    is_remote,
    policy,
)

__all__ = ["DicomWebSource", "RemotePolicy", "configure", "is_remote", "policy"]
