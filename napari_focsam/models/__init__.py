"""Torch modules and preprocessing for SAM and FocSAM: the named architectures, the networks and the transforms.
Weight files are read by :mod:`napari_focsam.weights`. Never imports napari or Qt."""
