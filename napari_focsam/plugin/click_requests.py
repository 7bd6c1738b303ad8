"""Requests for the current object's mask: from the layers' events, and started early at the mouse press.

napari adds a clicked point at the mouse *release* (a press that drags pans the view instead), and adding it costs
the GUI thread tens of milliseconds (the layer's data, features, selection, the dims, the layer list) before the
plugin hears of it. So the annotator starts the click's model step at the *press*, from the prompts the point will
give, on the click thread:

* when the release adds exactly that point, the request the new point makes is the pressed one: no second job; its
  mask is written as soon as it is there (at once when the model finished while the button was held);
* when it does not (the press became a drag, the point landed elsewhere), the early result is never written, and a
  step it left in the object's session is taken back (the session goes back to the prompts shown, and the step is
  not kept for redo).

A press starts early only where that is exact and cheap to take back: an embedded, untiled slice, an object not
decoded on a zoom and not about to be zoomed, and a session with nothing to redo and room in its history (so taking
the step back loses nothing). Everything else is requested when the point is added, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from napari.layers import Points
from napari.utils.notifications import show_info
from qtpy.QtCore import QTimer

from ..engine.jobs import Job
from ..engine.types import CancelToken, Prompts
from ..engine.zoom_clicks import wants_zoom
from . import layers as L
from .controller_parts import ControllerParts
from .work import ClickResult, compute_object

CLICK = "click"  # job keys: (CLICK, slice, object id)
DRAG_THRESHOLD = 5  # canvas pixels: napari's Points add mode pans beyond this instead of adding a point


@dataclass(eq=False)
class Pressed:
    """A click started at the mouse press, waiting for napari to add its point."""

    index: tuple[int, ...]
    object_id: int
    prompts: Prompts  #: the prompts the point gives when added where it was pressed
    manager: Any
    signature: tuple[Any, ...]
    superseded: bool  #: a job of the same slice and object was under way (this one replaced it)
    job: Job | None = None
    started: bool = False  #: the model step began (the session may hold its step)
    adopted: bool = False  #: napari added the point: the result is the click's
    ticket: int | None = None  #: the stability ticket of the request that adopted it
    result: ClickResult | None = None  #: held until adopted
    deliver: Callable[[ClickResult, int | None], None] = field(default=lambda result, ticket: None)


class ClickRequests(ControllerParts):
    """The current object's requests (a controller mixin; GUI thread)."""

    def _init_requests(self) -> None:
        self._pressed: Pressed | None = None

    def update(self) -> None:
        """Recompute the current object on the current slice from the prompts there (latest request per slice and
        object wins; requests made while a job of theirs runs coalesce into one)."""
        if not self.ready:
            if self.manager is None:
                show_info("FocSAM: load a model first (or choose the fallback)")
            return
        index, object_id = self.index, self.object_id
        ticket = self._stability_ticket()  # the stability under way is out of date
        prompts = self._prompts(index)
        self._base(index, object_id)  # the slice before this object (Cancel restores it)
        pressed = self._adopt_press(index, object_id, prompts, ticket)
        if pressed == "adopted":
            return
        # a pressed job this request supersedes may have left its step in the session, whose mask decides
        # zooming: this request syncs the session (replacing that step) on the whole slice
        zoom_work = self._zoom_work(index, object_id, prompts) if pressed is None else None
        if zoom_work is not None:
            self._submit_click(index, object_id, zoom_work)
            return
        self._request(index, object_id, prompts, ticket)

    def _request(self, index: tuple[int, ...], object_id: int, prompts: Prompts, ticket: int | None, *,
                 pressed: Pressed | None = None, forget_redo: bool = False) -> Job:
        """Submit the click job for ``prompts`` (``pressed``: started at a press, its result held until adopted;
        ``forget_redo``: the session keeps no step to redo afterwards)."""
        assert self.manager is not None  # ready
        data, rgb, contrast, signature = self.model_source()
        known = (self.manager, index, signature)  # a key is only ever reused with its own model and input
        args = (self.manager, data, index, rgb, contrast, object_id, prompts)

        def work(token: CancelToken) -> ClickResult:
            if pressed is not None:
                pressed.started = True
            result = compute_object(*args, token, known_key=self._known.get(known), tiles=self.tiles,
                                    region_only=True)
            session = result.manager.get_object(result.embedding_key, object_id) if forget_redo else None
            if session is not None:
                session.forget_redo()
            return result

        def deliver(result: ClickResult, ticket: int | None) -> None:
            self._on_result(result)
            self.request_stability(result.index, result.object_id, ticket)  # after the mask is shown

        def done(result: ClickResult) -> None:
            if result.manager is self.manager and self.image is not None and signature == self.model_source()[3]:
                self._known[known] = result.embedding_key
            if pressed is None:
                deliver(result, ticket)
            elif pressed.adopted:
                deliver(result, pressed.ticket)
            elif self._pressed is pressed:
                pressed.result = result  # the button is still held: written once napari adds the point

        if pressed is not None:
            pressed.deliver, pressed.signature = deliver, signature
        return self.jobs.submit((CLICK, index, object_id), work, done, self._on_error,
                                on_finished=lambda: self._job_finished(object_id), threads="interactive")

    # ------------------------------------------------------------------ the mouse press
    def _mouse_press(self, layer: Points, event: Any) -> Generator[None, None, None]:
        """The Points layer's first drag callback: the click's sign from the mouse, and the early start."""
        if layer.mode != "add":
            return
        negative = "Shift" in event.modifiers or event.button == 2
        positive = self.next_positive and not negative
        layer.feature_defaults = {L.SIGN_FEATURE: positive}
        pressed = self._press(layer, event, positive)
        if pressed is None:
            return
        start = np.asarray(event.pos, dtype=float)
        yield
        while event.type == "mouse_move":
            if np.linalg.norm(np.asarray(event.pos, dtype=float) - start) >= DRAG_THRESHOLD:
                self._drop_press(pressed)  # a drag: napari pans, no point is added
            yield
        # napari's own callback adds the point after this one, in this same release; adopted by then or dropped
        QTimer.singleShot(0, lambda: self._drop_press(pressed))

    def _press(self, layer: Points, event: Any, positive: bool) -> Pressed | None:
        """Start the click a press at ``event`` gives, if it can start early (see the module docstring)."""
        if self._muted or layer is not self.points or not self.ready or self._pressed is not None:
            return None
        assert self.manager is not None and self.image is not None  # ready
        index, object_id = self.index, self.object_id
        if self._keys.get(index) is None or self.is_tiled(index) or (index, object_id) in self.zooms:
            return None
        session = self.session()
        if session is not None and (session.can_redo or session.n_kept >= session.max_history):
            return None
        points = self.points
        assert points is not None  # the layer pressed
        coords = L.layer_to_image(points, self.image, np.asarray(points.world_to_data(event.position))[None])[0]
        leading = len(index)
        if np.any(np.round(coords[:leading]).astype(int) != np.asarray(index, dtype=int)):
            return None
        y, x = coords[leading: leading + 2]
        height, width = (self.image.data[0] if self.image.multiscale else self.image.data).shape[leading:leading + 2]
        if not (0 <= y <= height - 1 and 0 <= x <= width - 1):
            return None  # outside the image: the added point gets its message the usual way
        prompts = self._prompts(index).with_point(float(y), float(x), positive)
        if (self.auto_zoom and session is not None and self._may_zoom(index)
                and wants_zoom(prompts, session, self.manager)):
            return None
        self._base(index, object_id)
        self.cancel_stability()  # the mask it is for is about to change (a drop computes it again)
        key = (CLICK, index, object_id)
        pressed = Pressed(index, object_id, prompts, self.manager, (), superseded=bool(self.jobs.active(key)))
        self._pressed = pressed
        pressed.job = self._request(index, object_id, prompts, None, pressed=pressed)
        return pressed

    def _adopt_press(self, index: tuple[int, ...], object_id: int, prompts: Prompts, ticket: int) -> str | None:
        """``"adopted"`` when the request for ``prompts`` is the pressed click's (its result is, or will be,
        written), ``"superseded"`` when the request replaces the pressed job of its slice and object, else None."""
        pressed = self._pressed
        if pressed is None:
            return None
        assert pressed.job is not None
        if pressed.index != index or pressed.object_id != object_id or pressed.manager is not self.manager:
            self._drop_press(pressed)
            return None
        self._pressed = None
        if (pressed.job.token.cancelled or pressed.signature != self.model_source()[3]
                or not same_prompts(pressed.prompts, prompts)):
            return "superseded"
        pressed.adopted, pressed.ticket = True, ticket
        if pressed.result is not None:
            pressed.deliver(pressed.result, ticket)
        return "adopted"

    def _drop_press(self, pressed: Pressed) -> None:
        """The pressed click gave no point (or another one): its result is never written, and a step it made is
        taken back."""
        if self._pressed is not pressed:
            return  # adopted, or dropped already
        self._pressed = None
        if not (pressed.started or pressed.superseded) or not self.ready or pressed.manager is not self.manager:
            self.jobs.cancel((CLICK, pressed.index, pressed.object_id))
            if self.ready:
                self.request_stability(pressed.index, pressed.object_id)  # the press had cancelled it
            return
        # the session back to the prompts before the press, nothing left to redo (this request runs after the
        # pressed job, which it supersedes; a job that one superseded had a mask to write: this one writes it)
        p = pressed.prompts
        before = Prompts(p.points[:-1], p.labels[:-1], p.box, p.mask, p.scribbles)
        self._request(pressed.index, pressed.object_id, before, self._stability_ticket(), forget_redo=True)

    def _forget_press(self) -> bool:
        """Drop a click started at a press still held (before undo, cancel, commit, another model...); whether
        there was one."""
        pressed = self._pressed
        if pressed is not None:
            self._drop_press(pressed)
        return pressed is not None


def same_prompts(a: Prompts, b: Prompts) -> bool:
    """Whether two prompt sets are equal (clicks in order, box, region, scribbles)."""
    if not (np.array_equal(a.points, b.points) and np.array_equal(a.labels, b.labels)):
        return False
    for x, y in ((a.box, b.box), (a.mask, b.mask)):
        if x is None or y is None:
            if x is not y:
                return False
        elif x is not y and not np.array_equal(x, y):
            return False
    return len(a.scribbles) == len(b.scribbles) and all(
        s.positive == t.positive and np.array_equal(s.points, t.points) for s, t in zip(a.scribbles, b.scribbles))
