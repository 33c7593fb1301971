"""Region-based active learning for whole-slide image annotation.

The core API (``wsi``, ``synthetic``, ``geometry``, ``priority``, ``selection``) is pure
numpy/scipy and knows nothing of napari; the napari plugin lives in ``_widgets``,
``_reader`` and ``_sample_data``. Importing this package imports nothing heavy.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
