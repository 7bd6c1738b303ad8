"""Model weight files: the registry of known models, verified downloads into the offline cache, checkpoint reading
and key mapping, restricted unpickling, loading a checkpoint into the networks of :mod:`napari_focsam.models`, the
choice of the best cached model and the ``models`` command. Never imports napari or Qt."""
