"""A pydicom decoding plugin: JPEG lossless through libjpeg-turbo 3 (imagecodecs).

torchdicom pins one decoding plugin per transfer syntax (see
:func:`torchdicom.io.frames.decoding_plugin`) and reads some syntaxes by calling
that plugin's codec directly. For JPEG lossless (.57 / .70) the fastest
well-kept decoder is libjpeg-turbo 3, through ``imagecodecs`` (the
``torchdicom[codecs]`` extra), about 6x pylibjpeg-libjpeg. pydicom has no plugin
for it, so this module is one (pydicom's plugin contract: ``is_available``,
``DECODER_DEPENDENCIES`` and a ``_decode_frame(src, runner)``), registered as
``"imagecodecs"`` on pydicom's JPEG lossless decoders by :func:`register`.
With it pinned, pydicom's ``pixel_array(..., decoding_plugin="imagecodecs")``
and torchdicom's direct route decode with the same library, so they agree on
every code-stream, damaged ones included (where decoders legitimately differ).

Lossless, so on intact code-streams it equals pylibjpeg-libjpeg and GDCM bit
for bit (checked on every real JPEG lossless file of the test sets).
"""

from __future__ import annotations

import threading
from typing import Any

from pydicom import uid

__all__ = ["DECODER_DEPENDENCIES", "LABEL", "is_available", "register"]

LABEL = "imagecodecs"
_SYNTAXES = (uid.JPEGLossless, uid.JPEGLosslessSV1)
DECODER_DEPENDENCIES = {syntax: ("imagecodecs",) for syntax in _SYNTAXES}
_REGISTERED = False
_LOCK = threading.Lock()


def is_available(transfer_syntax: str) -> bool:
    """Whether this plugin decodes ``transfer_syntax`` here (imagecodecs with libjpeg-turbo)."""
    if transfer_syntax not in _SYNTAXES:
        return False
    try:
        import imagecodecs
    except ImportError:
        return False
    return bool(getattr(getattr(imagecodecs, "JPEG8", None), "available", False))


def _decode_frame(src: bytes, runner: Any) -> bytes:
    """One JPEG lossless frame as bytes, in the container size pydicom's runner expects."""
    import imagecodecs

    arr = imagecodecs.jpeg8_decode(src)
    if arr.dtype.itemsize * 8 != runner.bits_allocated:
        raise ValueError(
            f"libjpeg-turbo decoded {arr.dtype.itemsize * 8}-bit samples for"
            f" (0028,0100) Bits Allocated {runner.bits_allocated}"
        )
    return arr.tobytes()


def register() -> bool:
    """Add the plugin to pydicom's JPEG lossless decoders once; whether it is available.

    pydicom appends it after its own plugins, so pydicom's own choice when no
    plugin is named does not change.
    """
    global _REGISTERED
    if not is_available(uid.JPEGLosslessSV1):
        return False
    with _LOCK:
        if not _REGISTERED:
            from pydicom.pixels import get_decoder

            for syntax in _SYNTAXES:
                decoder = get_decoder(syntax)
                if LABEL not in decoder.available_plugins:
                    decoder.add_plugin(LABEL, (__name__, "_decode_frame"))
            _REGISTERED = True
    return True
