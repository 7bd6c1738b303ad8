"""The model manager: one predictor on one device, its embedding cache and the open object sessions.

Thread safety (the napari widget calls it from worker threads):

* :meth:`ModelManager.embed` may run concurrently from any number of threads; two requests for the same image and
  model compute the embedding once (the cache is single-flight), different images compute in parallel.
* Object sessions are independent: clicks on different objects run concurrently; calls on one object are
  serialised by that session's lock.
* Every long call takes an optional :class:`CancelToken`; a superseded request is abandoned at the next stage
  boundary (between ViT blocks, between decoder/refiner/post-processing) and leaves no partial state behind.
* Changing the model means creating a new manager; an old manager stays valid for the jobs still using it.

Memory: every session keeps at most ``max_history`` undo steps; a committed object (:meth:`ModelManager.commit_object`)
keeps only its last step (what re-opening it needs, see :meth:`ObjectSession.compact`), and only the
``keep_committed`` most recently committed sessions are kept at all (older ones are closed: re-opening them starts
from their pixels with no clicks recorded).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..weights.loader import load_model, resolve_device
from .cache import EmbeddingCache
from .image import to_model_rgb
from .predictor import Predictor
from .session import DEFAULT_MAX_HISTORY, ObjectSession
from .signature import data_signature, embedding_key
from .stability import Jitter, as_jitter
from .threads import bulk_work
from .types import CancelToken, EmbedResult, ImageEmbedding, Prompts

FALLBACK_NAME = "fallback"
#: ``ModelManager.load(precision=...)``: the device's fast dtypes (bf16 where it has them) or float32 throughout
PRECISIONS = ("fast", "float32")
#: committed sessions kept for exact re-opening (about 0.4 MiB each for SAM, + 4 MiB refined embedding for FocSAM)
DEFAULT_KEEP_COMMITTED = 32


@dataclass(frozen=True)
class EmbedInfo:
    """How the last embedding was obtained: computed (with its time) or read from the cache."""

    key: str
    seconds: float
    from_cache: bool


def _base_resolver(model: str, **kwargs: Any) -> Callable[[], str | os.PathLike | None] | None:
    """For a registry entry whose file is a decoder only (PA-SAM), a callable that finds its base model's file."""
    from ..weights.registry import REGISTRY

    entry = REGISTRY.get(model)
    if entry is None or entry.base_model is None:
        return None
    base_model = entry.base_model

    def resolve() -> str | os.PathLike | None:
        from ..weights.download import resolve_checkpoint

        return resolve_checkpoint(base_model, **kwargs)

    return resolve


def _session_key(session: ObjectSession) -> tuple[str, int] | None:
    """The key a manager keeps ``session`` under; None for a session it never opened (no object id)."""
    return None if session.object_id is None else (session.embedding.key, int(session.object_id))


class ModelManager:
    """Holds a predictor (SAM, FocSAM or the fallback), the embedding cache and the per-object sessions."""

    def __init__(self, predictor: Predictor, *, cache: EmbeddingCache | None = None,
                 robust: Jitter | bool | None = None) -> None:
        self.predictor = predictor
        self.cache = cache if cache is not None else EmbeddingCache()
        #: robust prompts for new objects (None: plain; see :mod:`.stability`); each object can change its own
        self.robust = as_jitter(robust)
        self._sessions: dict[tuple[str, int], ObjectSession] = {}
        self._committed: OrderedDict[tuple[str, int], None] = OrderedDict()  # oldest first
        self._lock = threading.RLock()
        self.last_embed: EmbedInfo | None = None
        #: undo steps per new session; committed sessions kept (see the module docstring)
        self.max_history = DEFAULT_MAX_HISTORY
        self.keep_committed = DEFAULT_KEEP_COMMITTED

    @classmethod
    def load(
        cls,
        model: str = FALLBACK_NAME,
        checkpoint: str | os.PathLike | None = None,
        *,
        device: str | torch.device = "auto",
        dtype: torch.dtype = torch.float32,
        precision: str = "fast",
        encoder_attention: str | None = None,
        encoder_dtype: torch.dtype | str | None = None,
        encoder_autocast: torch.dtype | None = None,
        decoder: str = "fast",
        decoder_autocast: torch.dtype | None = None,
        decoder_upscale_dtype: torch.dtype | str | None = "auto",
        decoder_attention_dtype: torch.dtype | str | None = "auto",
        cache: EmbeddingCache | None = None,
        store: str | os.PathLike | None = None,
        allow_random_weights: bool = False,
        download: bool = True,
        progress: Callable[[int, int | None], None] | None = None,
        base_checkpoint: str | os.PathLike | None = None,
        hq_token_only: bool = False,
        preprocessing: str | None = None,
        robust: Jitter | bool | None = None,
    ) -> ModelManager:
        """Load a model by name (``"sam_vit_b"``, ``"focsam_vit_h"``, …, or ``"fallback"``) and its weights.

        Without ``checkpoint``, the weights come from the model cache (downloaded there first if ``download``;
        ``progress(done_bytes, total_bytes)`` follows the download). ``allow_random_weights=True`` builds the
        model with seeded random weights instead (for tests and benchmarks: its masks mean nothing). ``store`` is
        an optional zarr directory for embeddings. Raises ``CheckpointError`` (``ModelUnavailable`` when offline)
        with a message that says what to do.

        The image encoder (see :class:`~napari_focsam.engine.sam_predictor.SamFamilyPredictor`): by default the fast
        path (``encoder_attention="fast"``) in the device's fast dtype (``encoder_dtype="auto"``: bfloat16 on CPUs
        with AVX512-BF16/AMX and on CUDA, else the model's dtype), within about 0.5 % of the float32 reference;
        ``encoder_dtype=torch.float32`` keeps the fast path within 1e-6 of it; ``encoder_attention="reference"``
        runs segment-anything's own blocks (bit-identical to ``SamPredictor`` in float32, or under
        ``encoder_autocast``; passing only ``encoder_autocast`` selects the reference path).
        The decoder: by default the fused one (``decoder="fast"``) with its products with the image tokens in the
        device's fast dtype (``decoder_upscale_dtype="auto"`` for the output upscaling and
        ``decoder_attention_dtype="auto"`` for the attention: bfloat16 on CPUs with native bfloat16, where masks stay
        within 0.5 % of pixels of float32; else the model's dtype; ``None`` keeps the model's dtype).
        ``decoder="reference"`` runs segment-anything's decoder forward as written instead (the same results within
        float rounding); ``decoder_autocast=torch.bfloat16`` runs the whole decoder under autocast.
        ``precision="float32"`` turns every lower-precision default off at once (encoder and decoder in the model's
        dtype; options passed explicitly still apply), for comparisons with published figures.
        ``robust=True`` (or a :class:`~napari_focsam.engine.stability.Jitter`) makes new objects use robust prompts:
        each step's mask is the consensus of its prompts and jittered copies of them (see :mod:`.stability`).

        HQ-SAM (``sam_hq_vit_*``): ``hq_token_only=True`` returns the HQ token's mask alone instead of its sum with
        SAM's (the official default). PA-SAM (``pa_sam_vit_l``): its decoder file (``epoch_20.pth``) holds the
        decoder only; ``base_checkpoint`` names SAM ViT-L's file for the encoders (default: from the model cache,
        downloaded if needed). ``preprocessing="stretch"`` puts images in the stretched 1024² frame of PA-SAM's and
        HQ-SAM's official evaluation instead of SAM's aspect-preserving one. See docs/models.md.
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "float32":
            encoder_dtype = dtype if encoder_dtype in (None, "auto") else encoder_dtype
        if cache is None:
            cache = EmbeddingCache(store=store)
        if model == FALLBACK_NAME:
            from .fallback import FallbackPredictor

            return cls(FallbackPredictor(), cache=cache, robust=robust)
        from ..weights.segnext import is_segnext

        if is_segnext(model):
            return cls._load_segnext(model, checkpoint, device=device, dtype=dtype, precision=precision,
                                     encoder_dtype=encoder_dtype, cache=cache, robust=robust,
                                     allow_random_weights=allow_random_weights, download=download, progress=progress)
        from .sam_predictor import SamFamilyPredictor

        if checkpoint is None and not allow_random_weights:
            from ..weights.download import resolve_checkpoint

            checkpoint = resolve_checkpoint(model, download=download, progress=progress)
        if encoder_attention is None:
            encoder_attention = "reference" if encoder_autocast is not None else "fast"
        if precision == "float32" or decoder != "fast" or decoder_autocast is not None:  # no bf16 decoder default
            decoder_upscale_dtype = None if decoder_upscale_dtype == "auto" else decoder_upscale_dtype
            decoder_attention_dtype = None if decoder_attention_dtype == "auto" else decoder_attention_dtype
        base: str | os.PathLike | Callable[[], str | os.PathLike | None] | None = base_checkpoint
        if base is None:
            base = _base_resolver(model, download=download, progress=progress)
        loaded = load_model(model, checkpoint, device=resolve_device(device), dtype=dtype, base_checkpoint=base)
        predictor = SamFamilyPredictor(loaded, encoder_attention=encoder_attention, encoder_dtype=encoder_dtype,
                                       encoder_autocast=encoder_autocast, decoder=decoder,
                                       decoder_autocast=decoder_autocast,
                                       decoder_upscale_dtype=decoder_upscale_dtype,
                                       decoder_attention_dtype=decoder_attention_dtype,
                                       hq_token_only=hq_token_only, preprocessing=preprocessing)
        return cls(predictor, cache=cache, robust=robust)

    @classmethod
    def _load_segnext(cls, model: str, checkpoint: str | os.PathLike | None, *, device: str | torch.device,
                      dtype: torch.dtype, precision: str, encoder_dtype: torch.dtype | str | None,
                      cache: EmbeddingCache, robust: Jitter | bool | None, allow_random_weights: bool,
                      download: bool, progress: Callable[[int, int | None], None] | None) -> ModelManager:
        """SegNext (see :mod:`.segnext_predictor`): ``precision="fast"`` runs bfloat16 products where the device has
        them, ``"float32"`` the model's dtype throughout."""
        from ..weights.segnext import load_segnext
        from .segnext_predictor import SegNextPredictor

        if checkpoint is None and not allow_random_weights:
            from ..weights.download import resolve_checkpoint

            checkpoint = resolve_checkpoint(model, download=download, progress=progress)
        loaded = load_segnext(model, checkpoint, device=resolve_device(device), dtype=dtype)
        lowp = None if precision == "float32" else "auto"
        encoder = encoder_dtype if encoder_dtype not in (None, "auto") else lowp
        return cls(SegNextPredictor(loaded, lowp=lowp, encoder_lowp=encoder), cache=cache, robust=robust)

    # ------------------------------------------------------------------ description
    @property
    def name(self) -> str:
        return self.predictor.name

    @property
    def display_name(self) -> str:
        return self.predictor.display_name

    @property
    def is_fallback(self) -> bool:
        return self.predictor.is_fallback

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    # ------------------------------------------------------------------ embeddings
    def key_for(self, image: np.ndarray) -> str:
        """The cache key of an already prepared (H, W, 3) uint8 image with this model."""
        return embedding_key(data_signature(image), self.predictor.fingerprint)

    def embed(
        self,
        image: np.ndarray,
        *,
        rgb: bool | None = None,
        contrast_limits: Sequence[float] | None = None,
        cancel: CancelToken | None = None,
    ) -> ImageEmbedding:
        """The embedding of one 2D image (gray, RGB/RGBA, any dtype), from the cache or computed."""
        prepared = to_model_rgb(image, rgb=rgb, contrast_limits=contrast_limits)
        return self.embed_prepared(prepared, self.key_for(prepared), cancel=cancel)

    def embed_prepared(self, prepared: np.ndarray, key: str, *, cancel: CancelToken | None = None) -> ImageEmbedding:
        """The embedding of an (H, W, 3) uint8 image the model takes as it is, cached under ``key`` (a view of a
        large image has its own key: :func:`~napari_focsam.engine.views.view_key`)."""
        computed: list[float] = []

        def compute() -> EmbedResult:
            start = time.perf_counter()
            with bulk_work():  # when a click job computes it: an embedding uses every core
                result = self.predictor.embed(prepared, cancel=cancel)
            computed.append(time.perf_counter() - start)
            return result

        embedding = self.cache.get_or_compute(key, compute, device=self.device)
        self.last_embed = EmbedInfo(key, computed[0] if computed else 0.0, from_cache=not computed)
        return embedding

    # ------------------------------------------------------------------ objects
    def new_object(
        self,
        image: np.ndarray | ImageEmbedding,
        object_id: int | None = None,
        *,
        rgb: bool | None = None,
        contrast_limits: Sequence[float] | None = None,
        cancel: CancelToken | None = None,
    ) -> ObjectSession:
        """Open a session for a new object on ``image`` (embedding it first if needed).

        ``object_id`` defaults to one more than the largest id open on this image. Opening an id that is already
        open replaces that session.
        """
        embedding = image if isinstance(image, ImageEmbedding) else self.embed(
            image, rgb=rgb, contrast_limits=contrast_limits, cancel=cancel
        )
        with self._lock:
            if object_id is None:
                ids = [oid for key, oid in self._sessions if key == embedding.key]
                object_id = max(ids, default=0) + 1
            session = ObjectSession(self.predictor, embedding, object_id=int(object_id),
                                    max_history=self.max_history, robust=self.robust)
            self._sessions[(embedding.key, int(object_id))] = session
            self._committed.pop((embedding.key, int(object_id)), None)
            return session

    def get_object(self, embedding: ImageEmbedding | str, object_id: int) -> ObjectSession | None:
        key = embedding if isinstance(embedding, str) else embedding.key
        with self._lock:
            return self._sessions.get((key, int(object_id)))

    def objects(self, embedding: ImageEmbedding | str | None = None) -> list[ObjectSession]:
        key = embedding.key if isinstance(embedding, ImageEmbedding) else embedding
        with self._lock:
            return [s for (k, _), s in self._sessions.items() if key is None or k == key]

    def close_object(self, session: ObjectSession) -> None:
        """Forget a session (and its refined embedding)."""
        key = _session_key(session)
        with self._lock:
            if key is not None and self._sessions.get(key) is session:
                del self._sessions[key]
                self._committed.pop(key, None)

    def commit_object(self, session: ObjectSession) -> None:
        """The object is done for now: release its undo history (:meth:`ObjectSession.compact`) and keep it for
        re-opening among the ``keep_committed`` most recent committed sessions (closing the oldest beyond)."""
        session.compact()
        key = _session_key(session)
        with self._lock:
            if key is None or self._sessions.get(key) is not session:
                return
            self._committed.pop(key, None)
            self._committed[key] = None
            while len(self._committed) > max(0, self.keep_committed):
                old, _ = self._committed.popitem(last=False)
                self._sessions.pop(old, None)

    def reopen_object(self, session: ObjectSession) -> None:
        """The object is being refined again: it no longer counts among the committed sessions."""
        key = _session_key(session)
        with self._lock:
            if key is not None:
                self._committed.pop(key, None)

    def segment(
        self,
        image: np.ndarray | ImageEmbedding,
        points: Sequence[Sequence[float]] = (),
        labels: Sequence[int] | None = None,
        box: Sequence[float] | None = None,
        **image_kwargs: Any,
    ) -> np.ndarray:
        """One-shot: the mask that clicking ``points`` (y, x) in order gives (labels default to positive)."""
        clicks = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        signs = np.ones(len(clicks), np.int64) if labels is None else np.asarray(labels)
        embedding = image if isinstance(image, ImageEmbedding) else self.embed(image, **image_kwargs)
        session = ObjectSession(self.predictor, embedding, robust=self.robust)
        return session.sync(Prompts(clicks, signs, None if box is None else np.asarray(box)))

    def segment_prompts(
        self, image: np.ndarray | ImageEmbedding, prompts: Prompts, **image_kwargs: Any
    ) -> np.ndarray:
        """One-shot: the mask that giving ``prompts`` (clicks, box, region, scribbles) in order gives, as
        :meth:`ObjectSession.sync <napari_focsam.engine.session.ObjectSession.sync>` replays them."""
        embedding = image if isinstance(image, ImageEmbedding) else self.embed(image, **image_kwargs)
        return ObjectSession(self.predictor, embedding, robust=self.robust).sync(prompts)
