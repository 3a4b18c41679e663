// The viewer's annotations: the features in view drawn by Annotorious (zoomed in), a density raster
// on a canvas overlay instead when there are too many or they are too small to read (zoomed out),
// one show/hide box per class, and drawing tools (rectangle, polygon, point) whose shapes are saved
// through the API as GeoJSON in level-0 pixels.
import { element, getJSON, send } from "./dom.js";
import { editable, toGeometry, toShape } from "./geometry.js";

const MAX_FEATURES = 2000;       // more than this in view: the density raster (and a cheap request)
const MIN_FEATURE_PIXELS = 6;    // typical outline smaller than this on screen: unreadable, so density...
const FEW_FEATURES = 50;         // ...unless there are only a few of them
const OUTLINE_PIXELS = 24;       // over the density, features at least this big on screen keep their outline
const DENSITY_CELL_PIXELS = 16;  // a density cell is about this many screen pixels wide
const DENSITY_ALPHA = 150 / 255; // of the densest cell, as heatmaps' cells: the tissue always shows through
const MARKER_PIXELS = 6;         // radius on screen of the disc that shows a point
const RELOAD_DELAY_MS = 250;     // wait for panning and zooming to pause before asking again
const UNCLASSIFIED_COLOR = "#8a8f99";
const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4",
  "#42d4f4", "#f032e6", "#9a6324", "#469990", "#800000"];

const classKey = (name) => name ?? "";  // the API's `class=` value: '' is unclassified
const label = (name) => name ?? "Unclassified";

function paletteColor(name) {
  // A class without a colour of its own gets a stable one from its name.
  if (!name) return UNCLASSIFIED_COLOR;
  let hash = 0;
  for (const char of name) hash = (hash * 31 + char.codePointAt(0)) >>> 0;
  return PALETTE[hash % PALETTE.length];
}

const rgb = (hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));

export async function showAnnotations(viewer, slide, me, panel) {
  if (typeof AnnotoriousOSD === "undefined") {  // a checkout whose vendor folder predates it
    panel.replaceChildren(element("h2", {}, "Annotations"),
      element("p", { class: "error" }, "Annotorious is missing: run make web."));
    return null;
  }
  const base = `/api/slides/${encodeURIComponent(slide.slide_id)}/annotations`;
  const loggedIn = Boolean(me.role);
  const state = {
    classes: new Map(),   // class key → {name, color, count}
    hidden: new Set(),    // class keys switched off
    features: new Map(),  // annotation id → the API's feature (GeoJSON + `slidebank`)
    mode: "none",         // "features" | "density" | "none"
    tool: "pan",
  };
  const aliases = new Map();  // Annotorious id → the server's, should the server not keep ours

  const anno = AnnotoriousOSD.createOSDAnnotator(viewer, {
    drawingEnabled: false,
    style: (annotation, shapeState) => styleOf(annotation, shapeState),
    // Only what one may change, and can save as the same geometry, opens in the editor.
    userSelectAction: (annotation) => (mayEdit(state.features.get(annotation.id)) ? "EDIT" : "SELECT"),
  });
  if (loggedIn) anno.setUser({ id: me.name, name: me.name });
  applyFilter();

  // --- panel -------------------------------------------------------------------------------------
  const classList = element("ul", { id: "annotation-classes", class: "classes" });
  const status = element("p", { id: "annotation-status", class: "muted", "aria-live": "polite" });
  const error = element("p", { id: "annotation-error", class: "error", role: "alert" });
  const names = element("datalist", { id: "annotation-class-names" });
  const newClass = element("input", {
    id: "new-class", name: "class", list: "annotation-class-names", placeholder: "class (optional)",
    maxlength: "255", autocomplete: "off",
  });
  const newColor = element("input", {
    id: "new-color", type: "color", value: paletteColor(null), title: "colour of a new class",
  });
  newClass.addEventListener("input", () => {  // a known class keeps its colour
    const name = newClass.value.trim() || null;
    newColor.value = state.classes.get(classKey(name))?.color || paletteColor(name);
  });
  const toolButtons = ["pan", "rectangle", "polygon", "point"].map((name) => {
    const title = name[0].toUpperCase() + name.slice(1);
    const button = element("button", { type: "button", "data-tool": name, "aria-pressed": "false" }, title);
    button.addEventListener("click", () => setTool(name));
    return button;
  });
  const selected = selectedEditor();
  panel.replaceChildren(
    element("h2", {}, "Annotations"), classList, status, error,
    ...(loggedIn
      ? [element("div", { class: "tools", role: "group", "aria-label": "Annotation tools" }, ...toolButtons),
         element("label", { class: "new-class" }, "Draw as ", newClass, newColor), names, selected.node]
      : [element("p", { class: "muted" }, "Log in to annotate."), selected.node]));
  setTool("pan");

  function renderClasses() {
    classList.replaceChildren(...[...state.classes.values()].map((c) => {
      const box = element("input", { type: "checkbox" });
      box.checked = !state.hidden.has(classKey(c.name));
      box.addEventListener("change", () => {
        box.checked ? state.hidden.delete(classKey(c.name)) : state.hidden.add(classKey(c.name));
        applyFilter();
        reload();
      });
      return element("li", { "data-class": classKey(c.name) }, element("label", {}, box,
        element("span", { class: "swatch", style: `background:${c.color}` }),
        element("span", { class: "name" }, label(c.name)),
        element("span", { class: "count" }, c.count.toLocaleString())));
    }));
    if (!state.classes.size) classList.append(element("li", { class: "muted" }, "No annotations yet."));
    const named = [...state.classes.values()].filter((c) => c.name);
    names.replaceChildren(...named.map((c) => element("option", { value: c.name })));
  }

  async function refreshClasses() {
    const classes = await getJSON(`${base}/classes`);
    state.classes = new Map(classes.map((c) => [classKey(c.name), { ...c, color: c.color || paletteColor(c.name) }]));
    renderClasses();
  }

  // --- drawing -----------------------------------------------------------------------------------
  function setTool(name) {
    if (!loggedIn) name = "pan";
    state.tool = name;
    for (const button of toolButtons) button.setAttribute("aria-pressed", String(button.dataset.tool === name));
    if (name === "rectangle" || name === "polygon") {
      anno.setDrawingTool(name);
      anno.setDrawingMode(name === "rectangle" ? "drag" : "click");  // drag a box; click polygon corners
      anno.setDrawingEnabled(true);
    } else {
      anno.cancelDrawing();
      anno.setDrawingEnabled(false);
    }
    viewer.element.classList.toggle("placing-points", name === "point");
  }

  // Annotorious has no point tool: a quick click in point mode places one.
  viewer.addHandler("canvas-click", (event) => {
    if (state.tool !== "point" || !event.quick || anno.state.hover.current) return;
    event.preventDefaultAction = true;
    const at = slideImage().viewerElementToImageCoordinates(event.position);
    if (at.x < 0 || at.y < 0 || at.x > slide.width || at.y > slide.height) return;
    const geometry = { type: "Point", coordinates: [Math.round(at.x * 100) / 100, Math.round(at.y * 100) / 100] };
    enqueue(async () => {  // the server gives it an id; the reload that follows draws it
      await send("POST", base, featureDocument(undefined, geometry, classForNew()));
      await refreshClasses();
    });
  });

  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || event.target.closest?.("input, textarea, select")) return;
    if (anno.getSelected().length) anno.cancelSelected();
    else setTool("pan");
  });

  function classForNew() {
    const name = newClass.value.trim() || null;
    return { name, color: name ? newColor.value : null };
  }

  function featureDocument(id, geometry, { name, color }) {
    // QuPath's shape of a feature, so exports open in QuPath as they were drawn here.
    const properties = { objectType: "annotation" };
    if (name) properties.classification = { name, color: rgb(color) };
    return { type: "Feature", ...(id ? { id } : {}), geometry, properties };
  }

  function draft(id, geometry, { name, color }) {
    // Stands in for the saved feature (its colour, its author) until the server answers.
    return { id, geometry, properties: {}, slidebank: { class: name, color, author: me.name } };
  }

  // Saves run one after another, in the order the user made them (an edit after its creation).
  let writes = Promise.resolve();
  async function settled() {  // until no save is pending, including any queued while waiting
    let seen;
    do {
      seen = writes;
      await seen;
    } while (seen !== writes);
  }
  function enqueue(task) {
    error.textContent = "";
    writes = writes.then(task).catch((failure) => {
      error.textContent = `Not saved: ${failure.message}`;
    });
    later();  // then show what the server has (counts, ids), once nothing is being edited
    return writes;
  }
  const featureUrl = (id) => `${base}/${encodeURIComponent(aliases.get(id) ?? id)}`;

  anno.on("createAnnotation", (annotation) => {
    const geometry = toGeometry(annotation.target.selector);
    const chosen = classForNew();
    state.features.set(annotation.id, draft(annotation.id, geometry, chosen));
    restyle();  // colour the new shape with its class at once
    enqueue(async () => {
      const saved = await send("POST", base, featureDocument(annotation.id, geometry, chosen));
      const [feature] = saved.features;
      if (feature.id !== annotation.id) aliases.set(annotation.id, feature.id);
      state.features.set(annotation.id, feature);
      await refreshClasses();
    });
  });

  anno.on("updateAnnotation", (annotation) => {
    const feature = state.features.get(annotation.id);
    if (!feature) return;
    const geometry = toGeometry(annotation.target.selector, feature.geometry);
    feature.geometry = geometry;
    enqueue(async () => {
      state.features.set(annotation.id, await send("PUT", featureUrl(annotation.id), { geometry }));
    });
  });

  anno.on("deleteAnnotation", (annotation) => {
    state.features.delete(annotation.id);
    enqueue(async () => {
      await send("DELETE", featureUrl(annotation.id));
      await refreshClasses();
    });
  });

  // --- the selected annotation: its class, its author, delete -------------------------------------
  function selectedEditor() {
    const name = element("input", {
      name: "class", list: "annotation-class-names", placeholder: "class", maxlength: "255", autocomplete: "off",
    });
    const color = element("input", { type: "color", name: "color" });
    const about = element("div", { class: "muted" });
    const apply = element("button", { type: "submit" }, "Set class");
    const remove = element("button", { type: "button", class: "delete" }, "Delete");
    const form = element("form", { class: "edit" }, name, color, apply, remove);
    const node = element("div", { id: "annotation-selected", hidden: "" }, element("strong", {}, "Selected"), about, form);
    let current = null;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const id = current;
      const change = { class_name: name.value.trim() || null };
      change.color = change.class_name ? color.value : null;
      const feature = state.features.get(id);
      if (!feature) return;
      Object.assign(feature.slidebank, { class: change.class_name, color: change.color });
      restyle();
      enqueue(async () => {
        state.features.set(id, await send("PUT", featureUrl(id), change));
        await refreshClasses();
        if (current === id) show(id);
      });
    });
    remove.addEventListener("click", () => {
      const id = current;
      anno.cancelSelected();
      anno.removeAnnotation(id);  // Annotorious reports the deletion: the handler above saves it
    });
    function show(id) {
      current = id;
      const feature = id && state.features.get(id);
      node.hidden = !feature;
      if (!feature) return;
      const info = feature.slidebank || {};
      name.value = info.class || "";
      color.value = info.color || paletteColor(info.class);
      about.replaceChildren(`${feature.geometry.type} · ${label(info.class)} · by ${info.author || "?"}`);
      if (info.job) {  // an algorithm's result: link to the run that made it (its provenance)
        about.append(" (", element("a", { href: `/jobs#${encodeURIComponent(info.job)}` }, `job ${info.job.slice(0, 8)}`), ")");
      }
      form.hidden = !mayEdit(feature, { anyShape: true });
    }
    return { node, show };
  }

  anno.on("selectionChanged", (annotations) => {
    selected.show(annotations.length === 1 ? annotations[0].id : null);
    if (!annotations.length && reloadWhenDeselected) later();
  });

  function mayEdit(feature, { anyShape = false } = {}) {
    // The server decides (author, the dataset's steward, an administrator); this spares a 403.
    if (!loggedIn || !feature) return false;
    const allowed = feature.slidebank?.author === me.name || me.role === "administrator"
      || (me.stewarded_datasets || []).includes(slide.dataset);
    return allowed && (anyShape || editable(feature.geometry));
  }

  // --- what is drawn -----------------------------------------------------------------------------
  function colorOf(feature) {
    const info = feature?.slidebank;
    if (!info) return newColor.value;
    return info.color || state.classes.get(classKey(info.class))?.color || paletteColor(info.class);
  }

  function styleOf(annotation, shapeState) {
    const color = colorOf(state.features.get(annotation.id));
    const emphasis = shapeState?.selected || shapeState?.hovered;
    const disc = annotation.target.selector.type === "ELLIPSE";
    const fillOpacity = disc ? 0.8 : emphasis ? 0.3 : 0.12;  // regions: the tissue stays visible beneath
    return { fill: color, fillOpacity, stroke: color, strokeOpacity: 1, strokeWidth: emphasis ? 3 : 2 };
  }

  // A new function each time, so that Annotorious draws every shape again with the current colours.
  const restyle = () => anno.setStyle((annotation, shapeState) => styleOf(annotation, shapeState));

  function applyFilter() {  // a new function each time, so that Annotorious applies it again
    const hiddenClass = (annotation) => state.hidden.has(classKey(state.features.get(annotation.id)?.slidebank?.class));
    anno.setFilter((annotation) => !hiddenClass(annotation));
  }

  const slideImage = () => viewer.world.getItemAt(0);
  const imageZoom = () => slideImage().viewportToImageZoom(viewer.viewport.getZoom(true));

  function viewportBox() {
    // The slide's part of the view, in level-0 pixels (the bounding box when the view is rotated).
    const image = slideImage();
    if (!image) return null;
    const view = image.viewportToImageRectangle(viewer.viewport.getBounds(true).getBoundingBox());
    const box = [Math.max(0, Math.floor(view.x)), Math.max(0, Math.floor(view.y)),
      Math.min(slide.width, Math.ceil(view.x + view.width)), Math.min(slide.height, Math.ceil(view.y + view.height))];
    return box[2] > box[0] && box[3] > box[1] ? box : null;
  }

  function classParams(params) {
    // Only the shown classes are asked for; all of them when none is hidden (new ones included).
    if (state.hidden.size) for (const key of state.classes.keys()) if (!state.hidden.has(key)) params.append("class", key);
    return params;
  }

  function screenSize(feature, zoom) {
    // A point is drawn as a disc of fixed size; anything else as big as its bounding box.
    if (feature.geometry.type === "Point") return 2 * MARKER_PIXELS;
    const [x0, y0, x1, y1] = feature.slidebank.bbox;
    return Math.max(x1 - x0, y1 - y0) * zoom;
  }

  function tooSmall(features, zoom) {
    if (features.length < FEW_FEATURES) return false;
    const sizes = features.map((f) => screenSize(f, zoom)).sort((a, b) => a - b);
    return sizes[Math.floor(sizes.length / 2)] < MIN_FEATURE_PIXELS;
  }

  function showFeatures(features) {
    const radius = MARKER_PIXELS / imageZoom();
    const loaded = new Map();
    const annotations = [];
    for (const feature of features) {
      const selector = toShape(feature.geometry, radius);
      if (!selector) continue;
      loaded.set(feature.id, feature);
      annotations.push({ id: feature.id, bodies: [], target: { annotation: feature.id, selector } });
    }
    state.features = loaded;
    anno.setAnnotations(annotations, true);
    restyle();
  }

  // The density raster: a small canvas, one pixel per grid cell, stretched by OpenSeadragon over
  // the part of the slide it counts (pixelated: each cell is a count, not a blur), see-through.
  const density = element("canvas", { class: "annotation-density", "aria-hidden": "true" });
  let densityShown = false;

  function drawDensity(grid) {
    const { columns, rows } = grid;
    density.width = columns;
    density.height = rows;
    const context = density.getContext("2d");
    const pixels = context.createImageData(columns, rows);
    const totals = new Float64Array(columns * rows);
    const mixed = new Float64Array(columns * rows * 3);
    for (const { name, counts } of grid.classes) {
      const color = rgb(state.classes.get(classKey(name))?.color || paletteColor(name));
      counts.forEach((row, y) => row.forEach((count, x) => {
        if (!count) return;
        const cell = y * columns + x;
        totals[cell] += count;
        for (let c = 0; c < 3; c++) mixed[cell * 3 + c] += color[c] * count;
      }));
    }
    const most = totals.reduce((a, b) => Math.max(a, b), 1);
    totals.forEach((total, cell) => {
      if (!total) return;
      for (let c = 0; c < 3; c++) pixels.data[cell * 4 + c] = mixed[cell * 3 + c] / total;  // colours mixed by count
      // sqrt: sparse cells stay visible; never opaque. The viewer's overlay opacity (CSS) scales it further.
      pixels.data[cell * 4 + 3] = 255 * DENSITY_ALPHA * (0.4 + 0.6 * Math.sqrt(total / most));
    });
    context.putImageData(pixels, 0, 0);
    const [x0, y0, x1, y1] = grid.bbox;
    const location = slideImage().imageToViewportRectangle(x0, y0, x1 - x0, y1 - y0);
    if (densityShown) viewer.updateOverlay(density, location);
    else viewer.addOverlay({ element: density, location });
    densityShown = true;
  }

  function hideDensity() {
    if (densityShown) viewer.removeOverlay(density);
    densityShown = false;
  }

  // --- loading what is in view -------------------------------------------------------------------
  let ticket = 0;
  let timer = null;
  let reloadWhenDeselected = false;

  const editing = () => {
    // Replacing the shapes would drop the one being edited: wait until it is let go.
    if (anno.getSelected().length) reloadWhenDeselected = true;
    return reloadWhenDeselected;
  };

  async function reload() {
    clearTimeout(timer);
    reloadWhenDeselected = false;
    if (editing()) return;
    const mine = ++ticket;
    try {
      await settled();  // what was just drawn is saved before asking what is there
      const box = viewportBox();
      const allHidden = state.classes.size > 0 && [...state.classes.keys()].every((key) => state.hidden.has(key));
      if (mine !== ticket) return;
      if (!box || allHidden) return show("none", [], 0);
      const bbox = box.join(",");
      const params = classParams(new URLSearchParams({ bbox, limit: MAX_FEATURES }));
      const result = await getJSON(`${base}?${params}`);
      if (mine !== ticket || editing()) return;  // the view moved on meanwhile: a newer answer is coming
      const zoom = imageZoom();
      if (!result.truncated && !tooSmall(result.features, zoom)) return show("features", result.features, result.total);
      // Density; regions big enough to read (a tumour outline among nuclei) keep their outlines,
      // when all the features in view are at hand to choose them from.
      const outlined = result.truncated ? [] : result.features.filter((f) => screenSize(f, zoom) >= OUTLINE_PIXELS);
      const cell = DENSITY_CELL_PIXELS / zoom;
      const columns = Math.min(256, Math.max(1, Math.ceil((box[2] - box[0]) / cell)));
      const rows = Math.min(256, Math.max(1, Math.ceil((box[3] - box[1]) / cell)));
      const grid = await getJSON(`${base}/density?${classParams(new URLSearchParams({ bbox, columns, rows }))}`);
      if (mine !== ticket || editing()) return;
      show("density", outlined, result.total, grid);
    } catch (failure) {
      status.textContent = `Annotations could not be loaded: ${failure.message}`;
    }
  }

  function show(mode, features, total, grid) {
    state.mode = mode;
    panel.dataset.mode = mode;
    showFeatures(features);
    if (grid) drawDensity(grid);
    else hideDensity();
    status.textContent = mode === "density"
      ? `${total.toLocaleString()} in view, ${(total - features.length).toLocaleString()} as density: zoom in for outlines`
      : mode === "features" && state.classes.size ? `${total.toLocaleString()} in view` : "";
  }

  const later = () => {
    clearTimeout(timer);
    timer = setTimeout(reload, RELOAD_DELAY_MS);
  };
  viewer.addHandler("viewport-change", later);
  viewer.addHandler("resize", later);

  window.slidebankAnnotations = { annotator: anno, state, reload };  // for tests and the console
  await refreshClasses();
  if (viewer.world.getItemCount()) await reload();
  else viewer.addOnceHandler("open", reload);
  return window.slidebankAnnotations;
}
