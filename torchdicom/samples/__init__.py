"""Deterministic generators of realistic sample DICOM sets.

The fastai medical-imaging tutorial works on three datasets — SIIM_SMALL chest
radiographs, CT slices and a thyroid ultrasound cine set — that cannot be
downloaded everywhere. These generators write look-alikes as *real* DICOM
files (file meta, preamble, proper SOP classes) so that the same loaders, the
demo and the tests run anywhere:

- :func:`siim_like`: 8-bit CR chest radiographs in ``train/<label>/`` folders.
- :func:`ct_like`: 512x512 CT series with rescale, windows, lesion masks, and
  the storage variants real exports mix (signed / unsigned / 12-in-16, shuffled
  instance numbers, extensionless files).
- :func:`us_cine_like`: multi-frame ultrasound cine, native and one JPEG
  baseline YBR_FULL_422 file, with per-frame nodule masks.
- :func:`demo_data`: all three under one cache folder, regenerated only when
  the manifest says the parameters or the files changed.

One module per set (``siim``, ``ct``, ``ultrasound``, ``demo``) over the shared
writing helpers (``_writing``). Every generator is a pure function of its arguments:
the same seed writes the same bytes (UIDs are derived from the seed, dates are drawn
from it, nothing reads the clock). Images are phantoms drawn with vectorised numpy — plausible
enough to look at and to train a tiny network on, never real patient data; the
names, IDs and dates in the headers are fake but realistic-looking so that
privacy tests have something to catch.
"""

from torchdicom.samples._sampleset import SampleSet
from torchdicom.samples.ct import ct_like
from torchdicom.samples.demo import SAMPLES_VERSION, DemoData, demo_data
from torchdicom.samples.siim import SIIM_LABELS, siim_like
from torchdicom.samples.ultrasound import us_cine_like

__all__ = [
    "SAMPLES_VERSION",
    "SIIM_LABELS",
    "DemoData",
    "SampleSet",
    "ct_like",
    "demo_data",
    "siim_like",
    "us_cine_like",
]
