"""Torch modules, checkpoint I/O and preprocessing for SAM and FocSAM. Never imports napari or Qt."""
