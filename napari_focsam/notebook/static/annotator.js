// The browser half of napari_focsam.notebook.Annotator (an anywidget ES module).
// It draws the slice (a PNG from the kernel), the labels (run-length patches of the changed box, coloured here)
// and the prompts, turns mouse and keys into messages, and never computes a mask: the kernel does.

const DRAG_PX = 4; // a pointer that moves farther than this between down and up draws a box
const ALPHA_CURRENT = 170, ALPHA_OTHER = 100;

function colour(id) {
  // a stable, well spread colour per label id (golden-ratio hues)
  const h = (id * 0.618033988749895) % 1, s = 0.75, v = 0.95;
  const i = Math.floor(h * 6), f = h * 6 - i;
  const p = v * (1 - s), q = v * (1 - f * s), t = v * (1 - (1 - f) * s);
  const [r, g, b] = [[v, t, p], [q, v, p], [p, v, t], [p, q, v], [t, p, v], [v, p, q]][i % 6];
  return [Math.round(r * 255), Math.round(g * 255), Math.round(b * 255)];
}

function u32(view) {
  // a DataView from the comm as a Uint32Array (copied: its offset need not be aligned)
  if (!view || view.byteLength === 0) return new Uint32Array(0);
  return new Uint32Array(view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength));
}

function make(tag, cls, parent, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}

const SHORTCUTS = "click: positive · Shift/right click: negative · drag: box · Ctrl/Alt+click: pick a label · " +
  "C/N: commit · Esc: cancel · Ctrl+Z / Ctrl+Shift+Z: undo / redo · T: sign of the next click · R: re-open · " +
  "Shift+Del: delete · D: refine detail (zoom) · arrows: move the window of a large slice";

function render({ model, el }) {
  const root = make("div", "focsam", el);
  root.tabIndex = 0;
  root.setAttribute("data-lm-suppress-shortcuts", "true"); // JupyterLab: our keys are not notebook commands

  const bar = make("div", "focsam-bar", root);
  const modelSelect = make("select", "focsam-model", bar);
  const deviceSelect = make("select", "focsam-device", bar);
  const precisionSelect = make("select", "focsam-precision", bar);
  const loadButton = make("button", "focsam-load", bar, "Load model");
  const actions = make("div", "focsam-bar", root);
  const buttons = {};
  for (const [name, text, tip] of [["undo", "Undo", "Ctrl+Z"], ["redo", "Redo", "Ctrl+Shift+Z"],
    ["commit", "Commit / next", "C or N"], ["cancel", "Cancel object", "Esc"],
    ["reopen", "Re-open label", "R (pick the label with Ctrl+click)"],
    ["delete", "Delete label", "Shift+Delete (pick the label with Ctrl+click)"],
    ["refine", "Refine detail", "D: zoom on the current object and decode it at the model's full resolution"]]) {
    buttons[name] = make("button", `focsam-${name}`, actions, text);
    buttons[name].title = tip;
    buttons[name].addEventListener("click", () => act(name));
  }
  const objectLabel = make("span", "focsam-object", actions);
  const view = make("div", "focsam-view", root);
  const stage = make("div", "focsam-stage", view);
  const imageCanvas = make("canvas", "focsam-image", stage);
  const labelCanvas = make("canvas", "focsam-labels", stage);
  const promptCanvas = make("canvas", "focsam-prompts", stage);
  const controls = make("div", "focsam-bar", root);
  const sliceBox = make("label", "focsam-slice", controls, "slice ");
  const slider = make("input", "focsam-slider", sliceBox);
  slider.type = "range";
  slider.min = 0;
  const sliceText = make("span", "", sliceBox);
  const contrastBox = make("label", "focsam-contrast", controls, "contrast ");
  const low = make("input", "focsam-low", contrastBox);
  const high = make("input", "focsam-high", contrastBox);
  for (const input of [low, high]) { input.type = "range"; input.step = "any"; }
  const contrastText = make("span", "", contrastBox);
  const overwriteBox = make("label", "", controls, " ");
  const overwrite = make("input", "focsam-overwrite", overwriteBox);
  overwrite.type = "checkbox";
  overwriteBox.append(" overwrite other objects");
  const stabilityBox = make("label", "", controls, " ");
  const stabilityCheck = make("input", "focsam-stability-on", stabilityBox);
  stabilityCheck.type = "checkbox";
  stabilityBox.append(" stability ");
  const stabilityText = make("span", "focsam-stability", stabilityBox);
  const zoomBox = make("label", "", controls, " ");
  const autoZoom = make("input", "focsam-auto-zoom", zoomBox);
  autoZoom.type = "checkbox";
  zoomBox.append(" auto zoom");
  const channelBox = make("span", "focsam-channels", controls, " channels ");
  const coords = make("div", "focsam-coords", root);
  const overviewBox = make("div", "focsam-overview-box", root);
  make("div", "focsam-help", overviewBox, "the whole slice: click to move the window shown above");
  const overview = make("canvas", "focsam-overview", overviewBox);
  const overviewCtx = overview.getContext("2d");
  overviewBox.style.display = "none";
  let overviewPicture = null;
  const progress = make("div", "focsam-progress", root);
  const status = make("div", "focsam-status", root);
  make("div", "focsam-help", root, SHORTCUTS);

  const S = { h: 0, w: 0, depth: 0, z: 0, ids: null, pixels: null, objectId: 1, selected: 0, points: [],
    box: null, seq: 0, pending: new Map(), nextPositive: true, takesBoxes: false, alive: true, drag: null,
    zoom: null, world: null, units: "", axes: [], channelCount: -1, oy: 0, ox: 0, fullH: 0, fullW: 0,
    windowed: false };
  const labelCtx = labelCanvas.getContext("2d");
  const promptCtx = promptCanvas.getContext("2d");
  const imageCtx = imageCanvas.getContext("2d");

  function send(message) {
    if (!S.alive) return false;
    model.send(message);
    return true;
  }

  function setStatus(text, level) {
    status.textContent = text || "";
    status.dataset.level = level || "info";
  }

  // ------------------------------------------------------------------ drawing
  function setView(msg, png) {
    // the canvas shows the window (y0, x0, y1, x1) of the slice: all of it, or a part of a large one
    const [wy0, wx0, wy1, wx1] = msg.window || [0, 0, msg.height, msg.width];
    const sized = S.h !== wy1 - wy0 || S.w !== wx1 - wx0;
    Object.assign(S, { h: wy1 - wy0, w: wx1 - wx0, oy: wy0, ox: wx0, fullH: msg.height, fullW: msg.width,
      depth: msg.depth, z: msg.z });
    S.windowed = S.h !== S.fullH || S.w !== S.fullW;
    overviewBox.style.display = S.windowed ? "" : "none";
    root.dataset.window = `${wy0},${wx0},${wy1},${wx1}`;
    S.world = msg.identity ? null : msg.world;
    S.units = msg.units || "";
    S.axes = msg.axes || [];
    if (sized) {
      for (const c of [imageCanvas, labelCanvas, promptCanvas]) { c.width = S.w; c.height = S.h; }
      const [sy, sx] = msg.pixel_size || [1, 1]; // the true proportions of an anisotropic pixel
      const width = model.get("display_width") || Math.min(S.w * Math.min(1, sx / sy), 768);
      stage.style.width = `${width}px`;
      stage.style.height = `${(width * S.h * sy) / (S.w * sx)}px`;
      S.ids = new Int32Array(S.w * S.h);
      S.pixels = labelCtx.createImageData(S.w, S.h);
    }
    sliceBox.style.display = S.depth ? "" : "none";
    slider.max = Math.max(0, S.depth - 1);
    slider.value = S.z;
    sliceText.textContent = ` ${S.z} / ${Math.max(0, S.depth - 1)}`;
    contrastBox.style.display = msg.rgb ? "none" : "";
    setChannels(msg.channels);
    const [lo, hi] = msg.range;
    for (const input of [low, high]) { input.min = lo; input.max = hi; }
    low.value = msg.contrast[0];
    high.value = msg.contrast[1];
    contrastText.textContent = ` ${(+msg.contrast[0]).toPrecision(4)} – ${(+msg.contrast[1]).toPrecision(4)}`;
    createImageBitmap(new Blob([png], { type: "image/png" })).then((bitmap) => {
      imageCtx.drawImage(bitmap, 0, 0);
      root.dataset.image = `${S.z}`;
    });
  }

  function setChannels(channels) {
    channelBox.style.display = channels ? "" : "none";
    if (!channels) return;
    if (S.channelCount !== channels.count) {
      S.channelCount = channels.count;
      channelBox.replaceChildren(" channels ");
      for (let c = 0; c < channels.count; c++) {
        const item = make("label", "", channelBox);
        const box = make("input", "focsam-channel", item);
        box.type = "checkbox";
        box.value = `${c}`;
        item.append(` ${c} `);
        box.addEventListener("change", chooseChannels);
      }
    }
    for (const box of channelBox.querySelectorAll("input")) box.checked = channels.chosen.includes(+box.value);
  }

  function chooseChannels(ev) {
    const chosen = [...channelBox.querySelectorAll("input")].filter((b) => b.checked).map((b) => +b.value);
    if (!chosen.length) {
      ev.target.checked = true;
      setStatus("the model needs at least one channel", "warning");
      return;
    }
    act("channels", { channels: chosen });
  }

  function inWindow(y, x) {
    return y >= S.oy && x >= S.ox && y < S.oy + S.h && x < S.ox + S.w;
  }

  function drawOverview(msg, png) {
    const [fh, fw] = msg.full;
    createImageBitmap(new Blob([png], { type: "image/png" })).then((bitmap) => {
      overviewPicture = { bitmap, fh, fw };
      overview.width = bitmap.width;
      overview.height = bitmap.height;
      const scale = 200 / Math.max(bitmap.width, bitmap.height);
      overview.style.width = `${bitmap.width * scale}px`;
      overview.style.height = `${bitmap.height * scale}px`;
      paintOverview();
      root.dataset.overview = `${msg.window.join(",")}`;
    });
  }

  function paintOverview() {
    if (!overviewPicture) return;
    const { bitmap, fh, fw } = overviewPicture;
    overviewCtx.drawImage(bitmap, 0, 0);
    const sy = bitmap.height / fh, sx = bitmap.width / fw;
    overviewCtx.strokeStyle = "rgb(255, 204, 26)";
    overviewCtx.lineWidth = Math.max(1, bitmap.width / 150);
    overviewCtx.strokeRect(S.ox * sx, S.oy * sy, S.w * sx, S.h * sy);
  }

  overview.addEventListener("click", (ev) => {
    const rect = overview.getBoundingClientRect();
    const y = ((ev.clientY - rect.top) / rect.height) * S.fullH, x = ((ev.clientX - rect.left) / rect.width) * S.fullW;
    act("window", { y, x });
  });

  function showCoords(y, x) {
    // the pixel under the pointer and, for an image placed in the world (scale, translate, affine), its position
    if (!inWindow(y, x)) { coords.textContent = ""; return; }
    const where = S.depth ? `pixel (${S.z}, ${y}, ${x})` : `pixel (${y}, ${x})`;
    if (!S.world) { coords.textContent = where; return; }
    const parts = S.world.map((row, i) => `${S.axes[i]} ${(row[0] * y + row[1] * x + row[2]).toPrecision(5)}`);
    coords.textContent = `${parts.join(", ")}${S.units ? " " + S.units : ""} · ${where}`;
  }

  function paint(x0, y0, x1, y1) {
    const data = S.pixels.data;
    for (let y = y0; y < y1; y++) {
      for (let x = x0, i = y * S.w + x0; x < x1; x++, i++) {
        const id = S.ids[i], o = 4 * i;
        if (id === 0) { data[o + 3] = 0; continue; }
        const [r, g, b] = colour(id);
        data[o] = r; data[o + 1] = g; data[o + 2] = b;
        data[o + 3] = id === S.objectId ? ALPHA_CURRENT : ALPHA_OTHER;
      }
    }
    labelCtx.putImageData(S.pixels, 0, 0, x0, y0, x1 - x0, y1 - y0);
  }

  function applyPatch(box, values, lengths) {
    const [y0, x0, y1, x1] = box;
    const w = x1 - x0;
    let p = 0;
    for (let k = 0; k < values.length; k++) {
      const id = values[k];
      for (let n = lengths[k]; n > 0; n--, p++) S.ids[(y0 + Math.floor(p / w)) * S.w + x0 + (p % w)] = id;
    }
    paint(x0, y0, x1, y1);
  }

  function drawPrompts() {
    promptCtx.setTransform(1, 0, 0, 1, 0, 0);
    promptCtx.clearRect(0, 0, S.w, S.h);
    promptCtx.setTransform(1, 0, 0, 1, -S.ox, -S.oy); // prompts are in slice pixels, the canvas is the window
    const r = Math.max(3, 0.012 * Math.max(S.w, S.h));
    promptCtx.lineWidth = Math.max(1, r / 3);
    if (S.box) {
      const [y0, x0, y1, x1] = S.box;
      promptCtx.strokeStyle = "rgb(255, 204, 26)";
      promptCtx.strokeRect(x0, y0, x1 - x0 + 1, y1 - y0 + 1);
    }
    if (S.zoom) {
      const [y0, x0, y1, x1] = S.zoom;
      promptCtx.save();
      promptCtx.setLineDash([4, 3]);
      promptCtx.strokeStyle = "rgba(0, 220, 255, 0.9)";
      promptCtx.strokeRect(x0, y0, x1 - x0, y1 - y0);
      promptCtx.restore();
    }
    if (S.drag && S.drag.moved) { // the drag, too, is in slice pixels
      promptCtx.strokeStyle = "rgba(255, 204, 26, 0.7)";
      const { x0, y0, x1, y1 } = S.drag;
      promptCtx.strokeRect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
    }
    for (const [y, x, positive] of S.points) {
      const cx = x + 0.5, cy = y + 0.5;
      promptCtx.beginPath();
      if (positive) {
        promptCtx.fillStyle = "rgb(51, 230, 77)";
        promptCtx.strokeStyle = "white";
        promptCtx.arc(cx, cy, r, 0, 2 * Math.PI);
        promptCtx.fill();
        promptCtx.stroke();
      } else {
        promptCtx.strokeStyle = "rgb(255, 64, 64)";
        promptCtx.moveTo(cx - r, cy - r); promptCtx.lineTo(cx + r, cy + r);
        promptCtx.moveTo(cx + r, cy - r); promptCtx.lineTo(cx - r, cy + r);
        promptCtx.stroke();
      }
    }
  }

  // ------------------------------------------------------------------ messages from the kernel
  function applyInfo(info) {
    const recolour = info.object_id !== S.objectId;
    S.objectId = info.object_id;
    S.selected = info.selected || S.selected;
    S.takesBoxes = info.takes_boxes;
    objectLabel.textContent = ` object ${info.object_id}` + (S.selected ? ` · picked label ${S.selected}` : "") +
      (info.zoom ? " · on its zoom" : "") + (info.tiled ? " · in tiles" : "");
    autoZoom.checked = !!info.auto_zoom;
    root.dataset.zoom = info.zoom ? "1" : "0";
    const zoomChanged = JSON.stringify(info.zoom || null) !== JSON.stringify(S.zoom);
    S.zoom = info.zoom || null;
    if (zoomChanged && S.w) drawPrompts();
    buttons.undo.disabled = !info.can_undo;
    buttons.redo.disabled = !info.can_redo;
    if (info.model && modelSelect.value !== info.model) modelSelect.value = info.model;
    root.dataset.model = info.model || "";
    root.dataset.busy = info.busy.length ? "1" : "0";
    progress.textContent = info.busy.join(" · ");
    progress.classList.toggle("focsam-active", info.busy.length > 0);
    setStatus(info.status, info.level);
    stabilityCheck.checked = !!info.stability_enabled;
    const st = info.stability;
    stabilityText.textContent = st === null || st === undefined ? "" : st.toFixed(2);
    stabilityText.style.color = info.stability_colour || "";
    if (recolour && S.ids) paint(0, 0, S.w, S.h);
  }

  function applyPrompts(prompts) {
    if (prompts.z !== S.z) return;
    S.points = prompts.points;
    S.box = prompts.box;
    drawPrompts();
  }

  function answered(seq, modelMs) {
    const applied = performance.now();
    const done = [...S.pending.keys()].filter((k) => k <= seq);
    for (const k of done) {
      const t0 = S.pending.get(k);
      S.pending.delete(k);
      if (k !== seq) continue; // superseded clicks were never computed on their own
      requestAnimationFrame(() => (window.focsamLatencies = window.focsamLatencies || []).push({ seq: k, applied_ms: applied - t0,
        painted_ms: performance.now() - t0, model_ms: modelMs }));
    }
    root.dataset.pending = `${S.pending.size}`;
  }

  model.on("msg:custom", (msg, buffers) => {
    if (msg.type === "overview") {
      if (msg.z === S.z) drawOverview(msg, buffers[0]);
    } else if (msg.type === "state" || msg.type === "image") {
      if (msg.type === "state" && msg.error) { setStatus(msg.error, "error"); root.dataset.error = "1"; return; }
      if (msg.models) fillChoices(msg);
      setView(msg, buffers[0]);
      if (buffers.length > 1) applyPatch([0, 0, S.h, S.w], u32(buffers[1]), u32(buffers[2]));
      if (msg.info) applyInfo(msg.info);
      if (msg.prompts) applyPrompts(msg.prompts);
    } else if (msg.type === "labels") {
      if (msg.z === S.z && msg.box) applyPatch(msg.box, u32(buffers[0]), u32(buffers[1]));
      if (msg.seq !== undefined && msg.seq !== null) answered(msg.seq, msg.model_ms);
    } else if (msg.type === "update") {
      applyInfo(msg.info);
      if (msg.prompts) applyPrompts(msg.prompts);
      if (msg.refused !== undefined && msg.refused !== null) {
        S.pending.delete(msg.refused);
        root.dataset.pending = `${S.pending.size}`;
      }
    }
    root.dataset.updates = `${(+root.dataset.updates || 0) + 1}`;
  });

  function fillChoices(msg) {
    for (const [select, items, current] of [[modelSelect, msg.models, msg.info.model],
      [deviceSelect, msg.devices, msg.device], [precisionSelect, msg.precisions, msg.precision]]) {
      select.replaceChildren();
      for (const [value, text] of items) make("option", "", select, text).value = value;
      if (current) select.value = current;
    }
  }

  // the kernel went away (restart, shutdown): say so; what was committed is in save_to if one was given
  const disconnected = () => {
    S.alive = false;
    root.classList.add("focsam-dead");
    setStatus("The kernel restarted or stopped: this annotator is disconnected (the picture is the last state). " +
      "Run the cells again to continue; labels saved with save_to= are read back.", "error");
    root.dataset.disconnected = "1";
  };
  model.on("comm_live_update", disconnected);
  model.on("comm:close", disconnected);
  const watchdog = setInterval(() => {  // a click with no answer for long: a cell is running, or the kernel is gone
    const oldest = Math.min(...S.pending.values());
    if (S.alive && S.pending.size && performance.now() - oldest > 20000) {
      setStatus("No answer from the kernel for 20 s: a cell may be running, or the kernel stopped.", "warning");
    }
  }, 2000);

  // ------------------------------------------------------------------ input
  function act(name, extra) {
    if (!send({ type: name, ...(extra || {}) })) disconnected();
  }

  function pixel(ev) {
    // the slice pixel (not the window's) under the pointer
    const rect = imageCanvas.getBoundingClientRect();
    return [S.oy + Math.floor(((ev.clientY - rect.top) * S.h) / rect.height),
      S.ox + Math.floor(((ev.clientX - rect.left) * S.w) / rect.width)];
  }

  view.addEventListener("contextmenu", (ev) => ev.preventDefault());
  view.addEventListener("pointerdown", (ev) => {
    if (!S.w) return;
    root.focus({ preventScroll: true });
    const [y, x] = pixel(ev);
    S.drag = { y0: y, x0: x, y1: y, x1: x, cx: ev.clientX, cy: ev.clientY, moved: false };
    view.setPointerCapture(ev.pointerId);
    ev.preventDefault();
  });
  view.addEventListener("pointermove", (ev) => {
    if (S.w) showCoords(...pixel(ev));
    if (!S.drag) return;
    [S.drag.y1, S.drag.x1] = pixel(ev);
    if (Math.hypot(ev.clientX - S.drag.cx, ev.clientY - S.drag.cy) > DRAG_PX) S.drag.moved = true;
    if (S.drag.moved) drawPrompts();
  });
  view.addEventListener("pointerup", (ev) => {
    const drag = S.drag;
    S.drag = null;
    if (!drag) return;
    const t0 = performance.now();
    const seq = ++S.seq;
    if (drag.moved) {
      [drag.y1, drag.x1] = pixel(ev);
      S.pending.set(seq, t0);
      act("box", { y0: drag.y0, x0: drag.x0, y1: drag.y1, x1: drag.x1, seq });
      drawPrompts();
    } else if (ev.ctrlKey || ev.altKey || ev.metaKey) {
      const [y, x] = pixel(ev);
      act("select", { label: inWindow(y, x) ? S.ids[(y - S.oy) * S.w + x - S.ox] : 0 });
      return;
    } else {
      const positive = !(ev.shiftKey || ev.button === 2) && S.nextPositive;
      const [y, x] = pixel(ev);
      const inImage = y >= 0 && x >= 0 && y < S.fullH && x < S.fullW;
      if (S.windowed && inImage && !inWindow(y, x)) {
        setStatus("that click is outside the part of the image shown: move the window with the overview", "warning");
        return;
      }
      S.pending.set(seq, t0);
      if (inImage) { S.points.push([y, x, positive ? 1 : 0]); drawPrompts(); }
      act("click", { y, x, positive, seq });
    }
    root.dataset.pending = `${S.pending.size}`;
  });

  root.addEventListener("keydown", (ev) => {
    const key = ev.key.toLowerCase();
    let name = null;
    if ((ev.ctrlKey || ev.metaKey) && key === "z") name = ev.shiftKey ? "redo" : "undo";
    else if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    else if (key === "c" || key === "n") name = "commit";
    else if (key === "escape") name = "cancel";
    else if (key === "r") name = "reopen";
    else if (key === "delete" && ev.shiftKey) name = "delete";
    else if (key === "d") name = "refine";
    else if (S.windowed && key.startsWith("arrow")) { // move the window of a large slice by half its size
      const [dy, dx] = { arrowup: [-1, 0], arrowdown: [1, 0], arrowleft: [0, -1], arrowright: [0, 1] }[key];
      act("window", { y: S.oy + S.h / 2 + (dy * S.h) / 2, x: S.ox + S.w / 2 + (dx * S.w) / 2 });
      ev.preventDefault();
      ev.stopPropagation();
      return;
    }
    else if (key === "t") {
      S.nextPositive = !S.nextPositive;
      setStatus(`next click: ${S.nextPositive ? "positive" : "negative"}`, "info");
    }
    if (name) act(name);
    if (name || key === "t") { ev.preventDefault(); ev.stopPropagation(); }
  });

  slider.addEventListener("change", () => act("slice", { z: +slider.value }));
  const contrast = () => act("contrast", { low: +low.value, high: +high.value });
  low.addEventListener("change", contrast);
  high.addEventListener("change", contrast);
  overwrite.addEventListener("change", () => act("overwrite", { on: overwrite.checked }));
  stabilityCheck.addEventListener("change", () => act("stability", { on: stabilityCheck.checked }));
  autoZoom.addEventListener("change", () => act("auto_zoom", { on: autoZoom.checked }));
  loadButton.addEventListener("click", () => act("load", { model: modelSelect.value,
    device: deviceSelect.value, precision: precisionSelect.value }));

  act("hello");
  return () => { clearInterval(watchdog); };
}

export default { render };
