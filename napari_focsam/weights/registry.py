"""The model registry: which named models exist, where their weights come from and how they are checked.

Every entry names the architecture it is built with (a :mod:`.specs` name), its preprocessing, where the official
file is published, its SHA-256 (or the xxh128 its authors pin) when known (otherwise the downloaded checkpoint is
checked by its structure: every key and shape must fit the architecture), its size and licence, the file name it has
in the cache, and the group it is listed under (general, microscopy, medical).

The cache folder is ``pooch.os_cache("napari-focsam")`` (``~/.cache/napari-focsam`` on Linux,
``~/Library/Caches/napari-focsam`` on macOS, ``%LOCALAPPDATA%\\napari-focsam\\napari-focsam\\Cache`` on Windows) or
the folder named by the environment variable ``NAPARI_FOCSAM_CACHE``. Checkpoints live in its ``models/``
subfolder, where files can also be dropped by hand for offline use (see :func:`models_dir`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: the environment variable that moves the cache folder (models are under ``$NAPARI_FOCSAM_CACHE/models``)
CACHE_ENV = "NAPARI_FOCSAM_CACHE"
FALLBACK_NAME = "fallback"

_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/{}"
_SAM_PAGE = "https://github.com/facebookresearch/segment-anything#model-checkpoints"
_FOCSAM_DRIVE_ID = "1VOeMkY9LovfWYi66JMR8q79gFiC4n3Az"
_SAM_LICENCE = "Apache-2.0"
# The SAM SHA-256 values are not published by Meta. They were looked up in other projects' registries, which agree:
# mazurowski-lab/SlicerSegmentWithSAM, SegmentWithSAM/SegmentWithSAM.py (3D Slicer's downloadFileIntoCache checksums,
# "SHA256:..." for all three files), and several independent download scripts / registries that pin the same three
# values together with the byte sizes recorded below (375,042,383 / 1,249,524,607 / 2,564,550,879 bytes).
# (They could not be re-checked against Meta's server from the build machine, which has no internet access; a wrong
# value would make every download fail its hash check loudly, never accept a wrong file.)
_SHA256_SOURCE = "sha256 as pinned by mazurowski-lab/SlicerSegmentWithSAM (SegmentWithSAM.py) and other registries"


@dataclass(frozen=True)
class ModelEntry:
    """One downloadable (or weight-free) model."""

    #: registry name, also the name used by ``ModelManager.load`` (e.g. ``"sam_vit_b"``)
    name: str
    display_name: str
    #: the :mod:`.specs` architecture it is built with (None: no network at all, the fallback)
    spec_name: str | None
    #: "sam" (segment-anything's SamPredictor conventions), "focsam" (the official FocSAM pipeline) or "none"
    preprocessing: str
    #: the checkpoint's file name in the cache (``<models_dir>/<file_name>``); None: the entry has no weights
    file_name: str | None = None
    #: download URLs, tried in order (mirrors)
    urls: tuple[str, ...] = ()
    #: a page a person can open to download the file by hand (for offline instructions)
    page_url: str | None = None
    #: lower-case hex SHA-256 of the downloaded file (the zip for zipped models); None when unknown (the checkpoint's
    #: structure is checked instead)
    sha256: str | None = None
    #: lower-case hex xxh128 of the downloaded file, for models whose authors pin that instead (micro-sam)
    xxh128: str | None = None
    #: where the hash comes from, or why there is none
    hash_note: str = ""
    #: size in bytes of the downloaded file, when known
    size: int | None = None
    #: a human size for listings when the exact size is unknown (e.g. an estimate)
    size_note: str = ""
    licence: str = ""
    #: "zip" when the download is an archive holding ``file_name`` (found anywhere inside it)
    archive: str | None = None
    #: the archive's file name in the cache (downloaded there, or dropped there by hand)
    archive_name: str | None = None
    description: str = ""
    #: the registry entry whose checkpoint supplies the image and prompt encoder when this entry's file holds a mask
    #: decoder only (PA-SAM: "sam_vit_l")
    base_model: str | None = None
    #: "general", "microscopy" or "medical": the heading it is listed under (``models list``, docs)
    group: str = "general"
    #: one line for model lists (the widget's model choice): what the weights are for
    summary: str = ""

    @property
    def has_weights(self) -> bool:
        return self.file_name is not None

    @property
    def checkpoint_sha256(self) -> str | None:
        """The expected hash of the checkpoint file itself (for zipped models, ``sha256`` is the zip's)."""
        return None if self.archive else self.sha256

    @property
    def known_hash(self) -> str | None:
        """The downloaded file's pinned hash as ``"algorithm:hex"`` (pooch's format), sha256 first; None: none."""
        if self.sha256:
            return f"sha256:{self.sha256}"
        return f"xxh128:{self.xxh128}" if self.xxh128 else None

    @property
    def checkpoint_hash(self) -> str | None:
        """:attr:`known_hash` of the checkpoint file itself (None for zipped models, whose hash is the zip's)."""
        return None if self.archive else self.known_hash

    @property
    def lean_name(self) -> str:
        """The file name of the optional lean (safetensors, tensors-only) copy made by ``make_lean``."""
        return f"{self.name}.safetensors"

    @property
    def human_size(self) -> str:
        if self.size is not None:
            return format_bytes(self.size)
        return self.size_note or "unknown"

    @property
    def download_name(self) -> str | None:
        """The name the downloaded file gets: the archive for zipped models, the checkpoint otherwise."""
        return self.archive_name if self.archive else self.file_name


def _drive_urls(file_id: str) -> tuple[str, ...]:
    # Google Drive's direct download endpoint (``confirm=t`` skips the "cannot scan for viruses" page of large files),
    # then the classic one as a fallback; when Drive answers with that page anyway, the downloader follows its form.
    return (f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t",
            f"https://drive.google.com/uc?export=download&id={file_id}")


def _sam(name: str, display: str, file_name: str, sha256: str, size: int, description: str) -> ModelEntry:
    return ModelEntry(
        name=name, display_name=display, spec_name=name, preprocessing="sam", file_name=file_name,
        urls=(_SAM_URL.format(file_name),), page_url=_SAM_PAGE, sha256=sha256, hash_note=_SHA256_SOURCE, size=size,
        licence=_SAM_LICENCE, description=description,
    )


_BUILTIN: tuple[ModelEntry, ...] = (
    _sam("sam_vit_b", "SAM ViT-B", "sam_vit_b_01ec64.pth",
         "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 375_042_383,
         "Segment Anything, ViT-B image encoder (91M parameters): the fastest SAM."),
    _sam("sam_vit_l", "SAM ViT-L", "sam_vit_l_0b3195.pth",
         "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", 1_249_524_607,
         "Segment Anything, ViT-L image encoder (308M parameters)."),
    _sam("sam_vit_h", "SAM ViT-H", "sam_vit_h_4b8939.pth",
         "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2_564_550_879,
         "Segment Anything, ViT-H image encoder (636M parameters): SAM's most accurate model."),
    ModelEntry(
        name="focsam_vit_h", display_name="FocSAM ViT-H", spec_name="focsam_vit_h", preprocessing="focsam",
        file_name="iter_160000.pth", urls=_drive_urls(_FOCSAM_DRIVE_ID),
        page_url=f"https://drive.google.com/file/d/{_FOCSAM_DRIVE_ID}/view",
        sha256=None,
        hash_note=("no hash is published for the Google-Drive zip and it could not be downloaded here to record "
                   "one: the extracted iter_160000.pth is checked by its structure (every key and shape of FocSAM "
                   "ViT-H) instead"),
        size=None, size_note="~2.7 GB (estimate)",
        licence="MIT (README; no LICENSE file)",
        archive="zip", archive_name="focsam_vit_h.zip",
        description=("FocSAM (CVPR 2024): SAM ViT-H with a fine-tuned decoder and the focus refiner; the official "
                     "mmengine checkpoint iter_160000.pth, published as a zip on Google Drive."),
    ),
    ModelEntry(
        name=FALLBACK_NAME, display_name="weight-free fallback (scikit-image)", spec_name=None, preprocessing="none",
        licence="Apache-2.0 (this package)", hash_note="no file",
        description="Segments from the same clicks with classical image processing; needs no weights at all.",
    ),
)

# ---- HQ-SAM and PA-SAM (see docs/models.md) ----
# HQ-SAM's checkpoints are published on the authors' Hugging Face model hub (lkeab/hq-sam, linked from the SysCV/sam-hq
# README). Each URL is pinned to the commit that uploaded the file; its SHA-256 and size are the Git LFS pointer of
# that commit (oid sha256 / size), as shown on the hub's file pages: sam_hq_vit_b.pth in 8a94b5e, sam_hq_vit_l.pth in
# 519b37f, sam_hq_vit_h.pth in 67ab824. (Not re-downloaded from the build machine, which has no internet access; a
# wrong value would make the download fail its hash check loudly, never accept a wrong file.)
_HQ_URL = "https://huggingface.co/lkeab/hq-sam/resolve/{}/{}"
_HQ_PAGE = "https://huggingface.co/lkeab/hq-sam"
_HQ_HASH_NOTE = "sha256 of the Git LFS object in huggingface.co/lkeab/hq-sam (commit {})"
_PA_PAGE = "https://github.com/xzz2/pa-sam"


def _sam_hq(size: str, commit: str, sha256: str, nbytes: int, description: str) -> ModelEntry:
    file_name = f"sam_hq_vit_{size}.pth"
    return ModelEntry(
        name=f"sam_hq_vit_{size}", display_name=f"HQ-SAM ViT-{size.upper()}", spec_name=f"sam_hq_vit_{size}",
        preprocessing="sam", file_name=file_name,
        urls=(_HQ_URL.format(commit, file_name), _HQ_URL.format("main", file_name)), page_url=_HQ_PAGE,
        sha256=sha256, hash_note=_HQ_HASH_NOTE.format(commit[:7]), size=nbytes, licence="Apache-2.0",
        description=description,
    )


_HIGH_QUALITY: tuple[ModelEntry, ...] = (
    _sam_hq("b", "8a94b5e92b6a4997d813d9057f37a8cb6213082a",
            "14a9d662cd6f5a9c2dba6d40ab0058d88d287e4a18fd6fdc6ad5fb1a3fdeaa57", 379_335_069,
            "HQ-SAM ViT-B (NeurIPS 2023): SAM ViT-B with a high-quality output token fusing early ViT features, for "
            "finer boundaries."),
    _sam_hq("l", "519b37f36c603d27fadf4000b8f8e10258b213eb",
            "e1a6c385d62bf005ded91a54d5ec55c985cfc4103ef89c08d90f39f04934c343", 1_254_865_805,
            "HQ-SAM ViT-L: SAM ViT-L with HQ-SAM's high-quality output token (finer boundaries)."),
    _sam_hq("h", "67ab82412bc794d5ce2e9799b8b6a3c0a8cfe1d2",
            "a7ac14a085326d9fa6199c8c698c4f0e7280afdbb974d2c4660ec60877b45e35", 2_570_940_653,
            "HQ-SAM ViT-H: SAM ViT-H with HQ-SAM's high-quality output token (finer boundaries)."),
    ModelEntry(
        name="pa_sam_vit_l", display_name="PA-SAM ViT-L", spec_name="pa_sam_vit_l", preprocessing="sam",
        file_name="epoch_20.pth", urls=(), page_url=_PA_PAGE, sha256=None,
        hash_note=("no hash or size is published (the authors share epoch_20.pth through Baidu Pan only): the file "
                   "is checked by its structure, every key and shape of PA-SAM's decoder (152 keys)"),
        size=None, size_note="~18 MB (decoder only; plus SAM ViT-L, 1.2 GB)", licence="none stated (no LICENSE file)",
        base_model="sam_vit_l",
        description=("PA-SAM (ICME 2024): SAM ViT-L with a prompt adapter in its decoder for finer masks. Manual "
                     "download: get epoch_20.pth from the Baidu Pan link in the README of github.com/xzz2/pa-sam and "
                     "put it in the models folder; SAM ViT-L's checkpoint is downloaded as usual."),
    ),
)

# ---- SegNext (see docs/models.md) ----
# The authors publish the three checkpoints on Google Drive only, linked from the README of uncbiag/SegNext, without
# hashes or stable file ids: they are manual downloads, checked by their structure (config + every key and shape).
_SEGNEXT_PAGE = "https://github.com/uncbiag/SegNext#evaluation"
_SEGNEXT_HASH = ("no hash is published (Google Drive only): the file is checked by its structure, its config and "
                 "every key and shape of the model ({} keys)")


def _segnext(name: str, display: str, file_name: str, keys: int, size: str, description: str) -> ModelEntry:
    return ModelEntry(
        name=name, display_name=display, spec_name=name, preprocessing="segnext", file_name=file_name, urls=(),
        page_url=_SEGNEXT_PAGE, sha256=None, hash_note=_SEGNEXT_HASH.format(keys), size=None, size_note=size,
        licence="MIT", description=description + (
            f" Manual download: get {file_name} from the Google Drive link in the README of "
            "github.com/uncbiag/SegNext (section Evaluation / model weights) and put it in the models folder."),
    )


_SEGNEXT: tuple[ModelEntry, ...] = (
    _segnext("segnext_vitb_sa1", "SegNext ViT-B SA×1 (COCO+LVIS)", "vitb_sa1_cocolvis_epoch_90.pth", 207, "~408 MB",
             "SegNext (CVPR 2024), one fusion block, trained on COCO+LVIS: dense prompts, a heavy network per click."),
    _segnext("segnext_vitb_sa2", "SegNext ViT-B SA×2 (COCO+LVIS)", "vitb_sa2_cocolvis_epoch_90.pth", 219, "~435 MB",
             "SegNext (CVPR 2024), two fusion blocks, trained on COCO+LVIS."),
    _segnext("segnext_vitb_sa2_hq", "SegNext ViT-B SA×2 (HQSeg-44K)", "vitb_sa2_cocolvis_hq44k_epoch_0.pth", 219,
             "~435 MB", "SegNext (CVPR 2024), two fusion blocks, fine-tuned on HQSeg-44K: the best of the compared "
             "models on HQSeg-44K (5-mIoU 91.75, NoC90 5.32)."),
)

# ---- microscopy and medicine (see docs/models.md) ----
# micro-sam's fine-tuned SAMs: the URLs and xxh128 hashes exactly as micro-sam 1.8.14 pins them in
# micro_sam/util.py (models(): encoder_registry / encoder_urls), files of the bioimage.io model zoo (version 1.2 of
# "diplomatic-bug", "idealistic-rat", "noisy-ox", "humorous-crab"). micro-sam pins no sizes: the sizes shown are
# estimates (the SAM tensors of that encoder). A file may hold micro-sam's instance-segmentation decoder too
# ({"model_state": ..., "decoder_state": ...}); that decoder is not used here (see checkpoint.py).
_BIOIMAGEIO = "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/{}/files/{}"
_MICROSAM_PAGE = "https://computational-cell-analytics.github.io/micro-sam/micro_sam.html#finetuned-models"
_MICROSAM_HASH = "xxh128 as pinned by micro-sam 1.8.14 (micro_sam/util.py, models()); it pins no size"
_MEDSAM_PAGE = "https://github.com/bowang-lab/MedSAM#model-training"


def _microsam(kind: str, data: str, size: str, zoo_id: str, xxh128: str, summary: str, description: str
              ) -> ModelEntry:
    name = f"microsam_vit_{kind}_{data}"
    return ModelEntry(
        name=name, display_name=f"micro-sam ViT-{kind.upper()} {'LM' if data == 'lm' else 'EM organelles'}",
        spec_name=name, preprocessing="sam", file_name=f"{name}.pt",
        urls=(_BIOIMAGEIO.format(f"{zoo_id}/1.2", f"vit_{kind}.pt"),), page_url=_MICROSAM_PAGE, xxh128=xxh128,
        hash_note=_MICROSAM_HASH, size=None, size_note=f"{size} (estimate)",
        licence="CC-BY-4.0", group="microscopy", summary=summary, description=description,
    )


_DOMAIN: tuple[ModelEntry, ...] = (
    _microsam("b", "lm", "~375 MB", "diplomatic-bug", "fe9252a29f3f4ea53c15a06de471e186",
              "light microscopy: cells and nuclei (fluorescence, phase contrast, brightfield)",
              "micro-sam's SAM ViT-B fine-tuned on light microscopy (cells and nuclei; Archit et al., Nature Methods "
              "2025): the default model of micro-sam."),
    _microsam("l", "lm", "~1.25 GB", "idealistic-rat", "017f20677997d628426dec80a8018f9d",
              "light microscopy: cells and nuclei (larger, slower, a little more accurate)",
              "micro-sam's SAM ViT-L fine-tuned on light microscopy (cells and nuclei)."),
    _microsam("b", "em_organelles", "~375 MB", "noisy-ox", "f3bf2ed83d691456bae2c3f9a05fb438",
              "electron microscopy: mitochondria, nuclei and other organelles",
              "micro-sam's SAM ViT-B fine-tuned on electron microscopy organelles (mitochondria, nuclei, ...)."),
    _microsam("l", "em_organelles", "~1.25 GB", "humorous-crab", "810b084b6e51acdbf760a993d8619f2d",
              "electron microscopy: organelles (larger, slower)",
              "micro-sam's SAM ViT-L fine-tuned on electron microscopy organelles."),
    ModelEntry(
        name="medsam_vit_b", display_name="MedSAM ViT-B", spec_name="medsam_vit_b", preprocessing="medsam",
        file_name="medsam_vit_b.pth", urls=(), page_url=_MEDSAM_PAGE, sha256=None,
        hash_note=("no hash is published (a Google Drive folder linked from the README of bowang-lab/MedSAM): the "
                   "file is checked by its structure, every key and shape of SAM ViT-B"),
        size=None, size_note="~375 MB (estimate)", licence="Apache-2.0", group="medical",
        summary="medical images (CT, MR, ultrasound, X-ray, endoscopy, ...): best with a box",
        description=("MedSAM (Ma et al., Nature Communications 2024): SAM ViT-B fine-tuned on 1.5 million medical "
                     "image-mask pairs; its own preprocessing (the image stretched to 1024², scaled to [0, 1]). "
                     "Manual download: get medsam_vit_b.pth from the Google Drive folder linked in the README of "
                     "github.com/bowang-lab/MedSAM and put it in the models folder."),
    ),
)

REGISTRY: dict[str, ModelEntry] = {
    entry.name: entry for entry in (*_BUILTIN, *_HIGH_QUALITY, *_SEGNEXT, *_DOMAIN)}
#: the headings of model lists, in order
GROUPS = ("general", "microscopy", "medical")


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; the error lists the names that exist."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(REGISTRY)}") from None


def register_entry(entry: ModelEntry, *, replace: bool = False) -> ModelEntry:
    """Add an entry (e.g. a mirror, a fine-tuned model, or a test model served locally)."""
    if entry.name in REGISTRY and not replace:
        raise ValueError(f"model {entry.name!r} is already registered (pass replace=True to replace it)")
    if entry.spec_name is not None and not entry.spec_name.startswith("segnext_"):
        from ..models.specs import get_spec

        get_spec(entry.spec_name)  # fail early on an unknown architecture
    if entry.group not in GROUPS:
        raise ValueError(f"unknown group {entry.group!r} (one of {', '.join(GROUPS)})")
    if entry.archive not in (None, "zip"):
        raise ValueError(f"unsupported archive type {entry.archive!r} (only 'zip')")
    if entry.archive and not (entry.archive_name and entry.file_name):
        raise ValueError("an archive entry needs archive_name (the zip's name) and file_name (the member)")
    REGISTRY[entry.name] = entry
    return entry


def unregister_entry(name: str) -> None:
    """Remove an entry added with :func:`register_entry` (built-in entries can be removed too)."""
    REGISTRY.pop(name, None)


def cache_dir() -> Path:
    """The cache folder: ``$NAPARI_FOCSAM_CACHE`` if set, else ``pooch.os_cache("napari-focsam")``.

    Read at every call, so changing the variable takes effect at once.
    """
    override = os.environ.get(CACHE_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    import pooch

    return Path(pooch.os_cache("napari-focsam")).expanduser()


def models_dir() -> Path:
    """Where checkpoints are downloaded to, and where files can be dropped by hand: ``<cache_dir>/models``.

    A file placed there under its registry file name (e.g. ``sam_vit_b_01ec64.pth``, ``iter_160000.pth``, or the
    FocSAM zip as ``focsam_vit_h.zip``) is found, verified once (by hash when known, else by structure) and used
    without any network access.
    """
    return cache_dir() / "models"


def format_bytes(size: int | float) -> str:
    """``375042383`` → ``'375 MB'`` (decimal units, like download pages)."""
    value = float(size)
    for unit in ("B", "kB", "MB"):
        if value < 1000:
            return f"{value:.0f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
