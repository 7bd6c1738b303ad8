"""Tiled embeddings: a large 2D image (or one slice of a stack) annotated tile by tile, never read whole.

:class:`TiledImage` puts a :class:`~.tile_grid.TileGrid` over an image (numpy, zarr, dask, a multi-scale list of
them: level 0 is used; a slice of a stack through ``index``). A tile is embedded the first time an object needs it
(:meth:`TiledImage.embed_tile`: only its view's region is read, and it is cached like any embedding, in the manager's
memory LRU and zarr store, under a key naming the tile's rectangle), and its neighbours are then embedded in the
background (:meth:`TiledImage.prefetch`, ``prefetch`` rings of tiles, on a thread of its own; superseded by the next
object's request). A front-end with a job runner makes its images with ``prefetch=0`` and runs
:meth:`TiledImage.prefetch_work` on the runner's low-priority queue instead. Mixed channels
(:class:`~.channels.ChannelStack`) are tiled through :class:`~.channels.MixedPlane`: a view reads and mixes only its
region of the chosen channels, and the tiles' keys name the mix (:func:`tiled_image_for`).

:class:`TiledObject` is one object on it. The rule for which embedding answers an object's prompts:

1. its first step goes to the tile whose core contains the centre of the prompts' bounding box
   (:meth:`TileGrid.tile_for <napari_focsam.engine.tile_grid.TileGrid.tile_for>`); if the prompts do not fit in
   that tile's view, to a view centred on them (:func:`~.views.view_around`, the model's input side, or larger with
   a margin of one halo when they need it: then shrunk to the model's input like an untiled image);
2. later steps stay on that view while every prompt lies inside it (the object keeps its state: FocSAM's refined
   embedding, the previous logits);
3. a prompt outside it moves the object to the view that rule 1 picks for all its prompts, where they are replayed
   (the mask is then what giving them all on that view gives); undoing that step goes back to the view it left, in
   the exact state it had there.

Every answer is a :class:`~.views.ViewMask`: the mask of the view's region, written back there only
(:meth:`TiledObject.write` also clears the object from a region it left). The mask of an object equals that of the
untiled pipeline run on the view's crop (exactly: it is that pipeline).

Contrast: 8-bit data is used as it is; give other dtypes ``contrast_limits`` (napari's), otherwise the limits are the
percentiles of the smallest level of a multi-scale image, or of the first tile read, and are then kept for every tile
(:attr:`TiledImage.contrast_limits`).
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .threads import bulk_work
from .tile_grid import Tile, TileGrid, check_tiling, default_tiling, prompts_extent
from .tile_source import Plane, level_zero, percentiles
from .tile_source import tiled_image_for as tiled_image_for  # the front-ends' registry, kept importable here
from .types import Cancelled, CancelToken, ImageEmbedding, Prompts
from .views import View, ViewMask, ViewObject, input_side, view_around, view_key

if TYPE_CHECKING:
    from .manager import ModelManager


class TiledImage:
    """A large image annotated through tiles with one manager's model (see the module).

    ``tile`` and ``halo`` default to :func:`~.tile_grid.default_tiling` for the model (SAM: 768 + 2 x 128 = 1024);
    ``rgb`` says the last axis is colour; ``index`` picks one slice of a stack over the leading axes; ``prefetch`` is
    how many rings of neighbours are embedded in the background after a tile (0: none).
    """

    def __init__(self, manager: ModelManager, image: Any, *, tile: int | None = None, halo: int | None = None,
                 rgb: bool | None = None, contrast_limits: Sequence[float] | None = None,
                 index: Sequence[int] = (), prefetch: int = 1) -> None:
        data = level_zero(image)
        shape = tuple(int(n) for n in data.shape)
        if rgb is None:
            rgb = len(shape) - len(index) == 3 and shape[-1] in (3, 4)
        spatial = 3 if rgb else 2
        if len(shape) != len(index) + spatial:
            raise ValueError(f"an image of shape {shape} with {len(index)} slice indices is not one 2D "
                             f"{'RGB ' if rgb else ''}image; give index= for the leading axes of a stack")
        for axis, (i, n) in enumerate(zip(index, shape)):
            if not 0 <= int(i) < n:
                raise IndexError(f"slice index {i} is outside axis {axis} of length {n}")
        self.manager = manager
        self.data = image
        self._objects: dict[int, TiledObject] = {}
        self.image = Plane(data, tuple(int(i) for i in index)) if index else data
        self.rgb = bool(rgb)
        side = input_side(manager.predictor)
        d_tile, d_halo, _ = default_tiling(side)
        tile, halo = check_tiling(d_tile if tile is None else tile, d_halo if halo is None else halo)
        self.grid = TileGrid(tuple(self.image.shape[:2]), tile, halo)
        self.input_side = side
        self.prefetch_rings = max(0, int(prefetch))
        self.contrast_limits = None if contrast_limits is None else tuple(float(v) for v in contrast_limits)
        if self.contrast_limits is None and np.dtype(data.dtype) not in (np.uint8, np.bool_):
            levels = image if isinstance(image, (list, tuple)) and len(image) > 1 else None
            if levels is not None:
                self.contrast_limits = percentiles(levels[-1])
        self._lock = threading.Lock()
        #: tiles (and free views) whose embedding was computed here, in order; ``from_cache``: read from a cache
        self.computed: list[Tile | View] = []
        self.from_cache: list[Tile | View] = []
        self._keys: dict[View, str] = {}
        self._prefetch_token: CancelToken | None = None
        self._prefetch_thread: threading.Thread | None = None
        #: what the pixels alone do not name (a channel mix: which channels, colours, limits), added to every key
        self.tag = str(getattr(data, "tag", ""))

    @property
    def shape(self) -> tuple[int, int]:
        return self.grid.image_shape

    # ------------------------------------------------------------------ embeddings
    def _prepare(self, image: Any, view: View) -> np.ndarray:
        from .image import to_model_rgb

        crop = view.read(image, rgb=self.rgb)
        if self.contrast_limits is None and crop.dtype not in (np.uint8, np.bool_):
            with self._lock:
                if self.contrast_limits is None:
                    self.contrast_limits = percentiles(crop)
        return to_model_rgb(crop, rgb=self.rgb, contrast_limits=self.contrast_limits)

    def prepare(self, view: View) -> np.ndarray:
        """The (h, w, 3) uint8 pixels the model sees of ``view`` (only its region read; this image's contrast)."""
        return self._prepare(self.image, view)

    def embed_view(self, view: View, *, cancel: CancelToken | None = None, name: Tile | View | None = None
                   ) -> ImageEmbedding:
        """The embedding of any view of this image, cached like any embedding under :func:`~.views.view_key`.

        The view's region is read once to name it (the image is assumed not to change while it is tiled; a changed
        image is a new :class:`TiledImage`); later calls find it in the cache without reading anything."""
        with self._lock:
            key = self._keys.get(view)
        prepared = None
        if key is None:
            prepared = self._prepare(self.image, view)
            key = view_key(self.manager, prepared, view, extra=self.tag)
        computed = []

        def compute() -> Any:
            pixels = prepared if prepared is not None else self._prepare(self.image, view)
            with bulk_work():
                result = self.manager.predictor.embed(pixels, cancel=cancel)
            computed.append(True)
            return result

        embedding = self.manager.cache.get_or_compute(key, compute, device=self.manager.device)
        with self._lock:
            self._keys[view] = key
            (self.computed if computed else self.from_cache).append(view if name is None else name)
        return embedding

    def embed_tile(self, tile: Tile, *, cancel: CancelToken | None = None) -> ImageEmbedding:
        """Tile ``tile``'s embedding (its view's region read, embedded and cached on first use)."""
        return self.embed_view(self.grid.view(tile), cancel=cancel, name=(tile[0], tile[1]))

    def prefetch_work(self, tile: Tile, rings: int | None = None) -> Callable[[CancelToken], list[Tile]] | None:
        """The work of embedding the tiles within ``rings`` (default: :attr:`prefetch_rings`) of ``tile``, nearest
        first (cached ones are found in the cache), as ``work(token)`` for a job runner: it stops between tiles and
        between the encoder's blocks when ``token`` is cancelled, and returns the tiles it embedded. None when
        there is nothing around ``tile`` to embed."""
        rings = self.prefetch_rings if rings is None else int(rings)
        tiles = self.grid.around(tile, rings) if rings > 0 else []
        if not tiles:
            return None

        def work(token: CancelToken) -> list[Tile]:
            done = []
            for t in tiles:
                token.raise_if_cancelled()
                self.embed_tile(t, cancel=token)
                done.append(t)
            return done

        return work

    def prefetch(self, tile: Tile, rings: int | None = None) -> threading.Thread | None:
        """Embed the tiles around ``tile`` in a thread of its own (:meth:`prefetch_work`); a new call cancels the
        previous one's remaining tiles. Returns the thread (None when there is nothing to do)."""
        with self._lock:
            if self._prefetch_token is not None:
                self._prefetch_token.cancel()
            self._prefetch_token = token = CancelToken()
        work = self.prefetch_work(tile, rings)
        if work is None:
            return None

        def run() -> None:
            try:
                work(token)
            except Cancelled:
                pass

        thread = threading.Thread(target=run, name="focsam-tile-prefetch", daemon=True)
        self._prefetch_thread = thread
        _PREFETCHING.add(self)
        thread.start()
        return thread

    def stop_prefetch(self) -> None:
        """Cancel the background embedding of neighbours and wait for it to stop."""
        with self._lock:
            if self._prefetch_token is not None:
                self._prefetch_token.cancel()
            thread = self._prefetch_thread
        if thread is not None:
            thread.join()

    def view_for(self, prompts: Prompts) -> tuple[View, Tile | None]:
        """The view that answers ``prompts`` by rule 1 (see the module) and its tile (None for a free view)."""
        tile = self.grid.tile_for(prompts)
        view = self.grid.view(tile)
        box = prompts_extent(prompts)
        if box is None or _fits(view, box):
            return view, tile
        free = view_around(box, self.shape, self.grid.view_side, margin=self.grid.halo)
        return free, None

    # ------------------------------------------------------------------ objects
    def new_object(self, object_id: int | None = None) -> TiledObject:
        return TiledObject(self, object_id)

    def object(self, object_id: int, *, create: bool = True) -> TiledObject | None:
        """The object ``object_id`` of this image (opened on first use when ``create``); a front-end's objects."""
        with self._lock:
            obj = self._objects.get(int(object_id))
            if obj is None and create:
                obj = self._objects[int(object_id)] = TiledObject(self, int(object_id))
            return obj


#: images whose prefetch thread may still run: stopped at exit, so that no thread is killed inside torch (which
#: aborts the process: "terminate called without an active exception")
_PREFETCHING: weakref.WeakSet[TiledImage] = weakref.WeakSet()


@atexit.register
def _stop_prefetching() -> None:
    for tiled in list(_PREFETCHING):
        tiled.stop_prefetch()


def _fits(view: View, box: np.ndarray | None) -> bool:
    """Whether ``box`` (see :func:`~.tile_grid.prompts_extent`; None: no prompts) lies inside ``view``."""
    return box is None or (view.contains(box[0], box[1]) and view.contains(box[2], box[3]))


class TiledObject:
    """One object on a :class:`TiledImage`: full-image prompts in, :class:`~.views.ViewMask` out (see the module)."""

    def __init__(self, tiled: TiledImage, object_id: int | None = None) -> None:
        self.tiled = tiled
        self.object_id = object_id
        self.current: ViewObject | None = None
        self.tile: Tile | None = None
        self._regions: list[tuple[int, int, int, int]] = []
        #: (view object, tile, its step count when the object moved there): views left / moved back from by undo
        self._left: list[tuple[ViewObject, Tile | None, int]] = []
        self._undone: list[tuple[ViewObject, Tile | None, int]] = []
        self._entered_at = 0
        self._lock = threading.RLock()

    @property
    def view(self) -> View | None:
        return None if self.current is None else self.current.view

    @property
    def prompts(self) -> Prompts:
        return Prompts() if self.current is None else self.current.prompts

    @property
    def mask(self) -> ViewMask | None:
        return None if self.current is None else self.current.mask

    @property
    def regions(self) -> list[tuple[int, int, int, int]]:
        """The regions of the views this object's masks have covered (the current one among them) since its last
        :meth:`write`: a front-end clears the object from those it left."""
        with self._lock:
            return list(self._regions)

    def _full_region(self, prompts: Prompts) -> Prompts:
        """``prompts`` whose region mask is in the current view's pixels, with the region in full-image pixels."""
        if prompts.mask is None or self.current is None or prompts.mask.shape == self.tiled.shape:
            return prompts
        full = np.zeros(self.tiled.shape, bool)
        full[self.current.view.slices] = prompts.mask
        return Prompts(prompts.points, prompts.labels, prompts.box, full, prompts.scribbles)

    def sync(self, prompts: Prompts, *, cancel: CancelToken | None = None) -> ViewMask:
        """Make the object's prompts equal ``prompts`` (full-image pixels; a region mask of the full image) on the
        view the module's rule picks; returns the mask of that view."""
        with self._lock:
            if prompts.is_empty:
                raise ValueError("no prompts: click on the object first")
            current = self.current
            moved = current is None or not _fits(current.view, prompts_extent(prompts))
            if current is None or moved:
                view, tile = self.tiled.view_for(prompts)
                embedding = (self.tiled.embed_tile(tile, cancel=cancel) if tile is not None
                             else self.tiled.embed_view(view, cancel=cancel))
                current = ViewObject(view, self.tiled.manager.new_object(embedding, self.object_id))
                if tile is not None:
                    self.tiled.prefetch(tile)
            result = current.sync(prompts, cancel=cancel)
            if moved:
                if self.current is not None:
                    self._left.append((self.current, self.tile, self._entered_at))
                self.current, self.tile, self._entered_at = current, tile, current.session.n_steps
            self._undone.clear()
            if result.region not in self._regions:
                self._regions.append(result.region)
            return result

    def click(self, y: float, x: float, positive: bool = True, *, cancel: CancelToken | None = None) -> ViewMask:
        return self.sync(self._full_region(self.prompts).with_point(y, x, positive), cancel=cancel)

    def set_box(self, box: Sequence[float], *, cancel: CancelToken | None = None) -> ViewMask:
        return self.sync(self._full_region(self.prompts).with_box(box), cancel=cancel)

    def add_scribble(self, points: Any, positive: bool = True, *, cancel: CancelToken | None = None) -> ViewMask:
        return self.sync(self._full_region(self.prompts).with_scribble(points, positive), cancel=cancel)

    def set_mask(self, mask: Any, *, cancel: CancelToken | None = None) -> ViewMask:
        return self.sync(self._full_region(self.prompts).with_mask(mask), cancel=cancel)

    def undo(self) -> ViewMask | None:
        """One step back; the step that moved the object to another view goes back to the view it left, in the
        exact state it had there."""
        with self._lock:
            if self.current is None:
                return None
            if self._left and self.current.session.n_steps <= self._entered_at:
                self._undone.append((self.current, self.tile, self._entered_at))
                self.current, self.tile, self._entered_at = self._left.pop()
                return self.current.mask
            return self.current.undo()

    @property
    def can_undo(self) -> bool:
        """Whether :meth:`undo` has a step to go back to (on this view, or back to a view left)."""
        return self.current is not None and (self.current.session.can_undo or bool(self._left))

    @property
    def can_redo(self) -> bool:
        return self.current is not None and (self.current.session.can_redo or bool(self._undone))

    def redo(self) -> ViewMask | None:
        with self._lock:
            if self.current is None:
                return None
            if self._undone and not self.current.session.can_redo:
                self._left.append((self.current, self.tile, self._entered_at))
                self.current, self.tile, self._entered_at = self._undone.pop()
                return self.current.mask
            return self.current.redo()

    def write(self, labels: Any, value: int) -> None:
        """Write the current mask into ``labels`` (full-size; numpy, zarr) as ``value``, touching only the regions
        this object has covered: its current view (set) and the views it left (cleared)."""
        mask = self.mask
        if mask is None:
            return
        for region in self._regions:
            if region != mask.region:
                ViewMask(self.tiled.shape, region, np.zeros((region[2] - region[0], region[3] - region[1]),
                                                            bool)).write(labels, value)
        self._regions = [mask.region]
        mask.write(labels, value)
