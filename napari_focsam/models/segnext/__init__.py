"""SegNext (CVPR 2024): a ViT-B image encoder run once per image and a per-click network that fuses a dense prompt
map with the image features (see :mod:`.network`, :mod:`.prompt_map`, :mod:`.loader`)."""
