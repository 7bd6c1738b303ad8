"""Architectures: what each named model is made of, independent of where its weights come from.

A :class:`ModelSpec` names an image-encoder configuration, whether the FocSAM focus refiner is present, and which
preprocessing the weights were trained with. The tiny specs are built through exactly the same builders and code
paths as the real ones, so tests exercise the real machinery with random weights in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EncoderConfig:
    """A SAM ViT image encoder (segment-anything's ``ImageEncoderViT`` arguments)."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    patch_size: int = 16
    img_size: int = 1024
    mlp_ratio: float = 4.0
    out_chans: int = 256
    #: segment-anything uses 1e-6; the official FocSAM backbone uses ``nn.LayerNorm``'s default 1e-5
    layer_norm_eps: float = 1e-6

    @property
    def embedding_size(self) -> int:
        return self.img_size // self.patch_size


@dataclass(frozen=True)
class ModelSpec:
    """One named model: encoder + SAM prompt encoder/decoder (+ FocSAM refiner) + its preprocessing."""

    name: str
    display_name: str
    encoder: EncoderConfig
    #: "sam": segment-anything's ``SamPredictor`` conventions; "focsam": the official FocSAM pipeline (BGR, /32 pad);
    #: "medsam": MedSAM's (see :class:`~napari_focsam.models.transforms.MedsamTransform`)
    preprocessing: str
    refiner: bool = False
    #: number of refiner blocks (12 in FocSAM; the tiny test spec uses 2: one plain and one shifted block)
    refiner_depth: int = 12
    #: the file name of the official checkpoint, for messages and the model registry
    checkpoint_name: str | None = None
    #: the mask decoder: "sam" (segment-anything's), "hq" (HQ-SAM's, see :mod:`.hq_decoder`) or "pa" (PA-SAM's,
    #: see :mod:`.pa_decoder`)
    decoder: str = "sam"

    @property
    def family(self) -> str:
        if self.refiner:
            return "focsam"
        return {"hq": "sam_hq", "pa": "pa_sam"}.get(self.decoder, "sam")


VIT_B = EncoderConfig(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11))
VIT_L = EncoderConfig(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23))
VIT_H = EncoderConfig(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31))
VIT_H_FOCSAM = EncoderConfig(
    embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31), layer_norm_eps=1e-5
)
#: width 64, depth 2: the smallest encoder that still produces SAM's 64x64x256 embedding of a 1024² input
VIT_TINY = EncoderConfig(embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,))
VIT_TINY_FOCSAM = EncoderConfig(embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,), layer_norm_eps=1e-5)

SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("sam_vit_b", "SAM ViT-B", VIT_B, "sam", checkpoint_name="sam_vit_b_01ec64.pth"),
        ModelSpec("sam_vit_l", "SAM ViT-L", VIT_L, "sam", checkpoint_name="sam_vit_l_0b3195.pth"),
        ModelSpec("sam_vit_h", "SAM ViT-H", VIT_H, "sam", checkpoint_name="sam_vit_h_4b8939.pth"),
        ModelSpec("focsam_vit_h", "FocSAM ViT-H", VIT_H_FOCSAM, "focsam", refiner=True,
                  checkpoint_name="iter_160000.pth"),
        ModelSpec("sam_tiny", "SAM tiny (random weights, for tests)", VIT_TINY, "sam"),
        ModelSpec("focsam_tiny", "FocSAM tiny (random weights, for tests)", VIT_TINY_FOCSAM, "focsam", refiner=True,
                  refiner_depth=2),
    )
}

# ---- HQ-SAM and PA-SAM (high-quality mask decoders on SAM's encoders; see docs/models.md) ----
#: a tiny encoder with two global blocks, so that HQ-SAM's "first global block" is not the last block
VIT_TINY_HQ = EncoderConfig(embed_dim=64, depth=3, num_heads=2, global_attn_indexes=(1, 2))
SPECS.update({
    spec.name: spec
    for spec in (
        ModelSpec("sam_hq_vit_b", "HQ-SAM ViT-B", VIT_B, "sam", decoder="hq", checkpoint_name="sam_hq_vit_b.pth"),
        ModelSpec("sam_hq_vit_l", "HQ-SAM ViT-L", VIT_L, "sam", decoder="hq", checkpoint_name="sam_hq_vit_l.pth"),
        ModelSpec("sam_hq_vit_h", "HQ-SAM ViT-H", VIT_H, "sam", decoder="hq", checkpoint_name="sam_hq_vit_h.pth"),
        ModelSpec("pa_sam_vit_l", "PA-SAM ViT-L", VIT_L, "sam", decoder="pa", checkpoint_name="epoch_20.pth"),
        ModelSpec("sam_hq_tiny", "HQ-SAM tiny (random weights, for tests)", VIT_TINY_HQ, "sam", decoder="hq"),
        ModelSpec("pa_sam_tiny", "PA-SAM tiny (random weights, for tests)", VIT_TINY, "sam", decoder="pa"),
    )
})

# ---- fine-tuned SAMs for microscopy and medicine (see docs/models.md): SAM's architecture, other weights ----
SPECS.update({
    spec.name: spec
    for spec in (
        ModelSpec("microsam_vit_b_lm", "micro-sam ViT-B LM", VIT_B, "sam", checkpoint_name="vit_b.pt"),
        ModelSpec("microsam_vit_l_lm", "micro-sam ViT-L LM", VIT_L, "sam", checkpoint_name="vit_l.pt"),
        ModelSpec("microsam_vit_b_em_organelles", "micro-sam ViT-B EM organelles", VIT_B, "sam",
                  checkpoint_name="vit_b.pt"),
        ModelSpec("microsam_vit_l_em_organelles", "micro-sam ViT-L EM organelles", VIT_L, "sam",
                  checkpoint_name="vit_l.pt"),
        #: MedSAM's own frame: the image stretched to 1024² (bicubic), min-max scaled to [0, 1], no mean/std
        ModelSpec("medsam_vit_b", "MedSAM ViT-B", VIT_B, "medsam", checkpoint_name="medsam_vit_b.pth"),
        ModelSpec("medsam_tiny", "MedSAM tiny (random weights, for tests)", VIT_TINY, "medsam"),
    )
})


def get_spec(name: str) -> ModelSpec:
    """The spec of a model name; the error lists the names that exist."""
    try:
        return SPECS[name]
    except KeyError:
        known = ", ".join(sorted(SPECS))
        raise ValueError(f"unknown model {name!r}; known models: {known}, fallback") from None
