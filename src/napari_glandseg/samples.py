"""The bundled sample images and the bundled model made for each (Qt-free).

The sample files themselves are read by the npe2 sample-data hooks
(:mod:`napari_glandseg._napari`); ``glandseg gui --sample``, the GUI and the bioimage.io
export's test input look the model up here.

>>> SAMPLES["glas"], model_sample("nuclei-he")
('glands-he', 'monuseg')
"""

from __future__ import annotations

#: The bundled sample data (npe2 sample keys) and the bundled model made for each.
SAMPLES = {"glas": "glands-he", "monuseg": "nuclei-he", "em": "membranes-em", "wbc": "wbc",
           "mri": "organs-mri"}


def model_sample(model_name: str) -> str | None:
    """The sample a bundled model was made for, or None."""
    return {m: k for k, m in SAMPLES.items()}.get(model_name)
