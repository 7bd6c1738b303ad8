"""The napari plugin: dock widget (view), controller (layer events → engine in workers → Labels writes) and layer
adapters. The only package that imports napari or Qt."""

from .widget import FocsamWidget

__all__ = ["FocsamWidget"]
