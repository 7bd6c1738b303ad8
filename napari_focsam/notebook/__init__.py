"""Click-to-segment inside Jupyter: :class:`Annotator`, an anywidget on the same engine as the napari widget.

Needs ``anywidget`` (``pip install "napari-focsam[notebook]"``); no Qt, no display. The core packages never import
this one.
"""

from .annotator import Annotator, ObjectInfo

__all__ = ["Annotator", "ObjectInfo"]
