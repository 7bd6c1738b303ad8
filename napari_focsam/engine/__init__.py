"""The annotation engine: model manager, per-object sessions, embedding cache, fallback. No napari or Qt."""
