// Slide page: OpenSeadragon on the Deep Zoom source, magnification buttons and readout, scale bar
// from µm/px (none when the pixel size is unknown), keyboard like pathologists' viewers, the slide's
// metadata and provenance, one opacity for the overlays (heatmaps, annotation density), and the
// panels for its annotations (annotations.js) and its quality control and heatmaps (quality.js).
import { showAnnotations } from "./annotations.js";
import { pixelSizeKnown } from "./dom.js";
import { showQuality } from "./quality.js";
import { showAccount } from "./session.js";

const slideId = decodeURIComponent(location.pathname.split("/").pop());
const MAGNIFICATIONS = { 1: 5, 2: 10, 3: 20, 4: 40 };  // number keys → objective magnification

const element = (tag, attributes = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.append(...children);
  return node;
};

const slide = await (await fetch(`/api/slides/${encodeURIComponent(slideId)}`)).json();
document.title = `Slidebank — ${slide.slide_id}`;
document.querySelector("#title").textContent = slide.slide_id;
const knownPixelSize = pixelSizeKnown(slide);
// Magnification the scan was made at: the scanner's objective, else the usual 0.25 µm/px = 40×.
const scanMagnification = slide.objective_power || (knownPixelSize ? 10 / slide.mpp_x : null);

const viewer = OpenSeadragon({
  element: document.querySelector("#viewer"),
  tileSources: `/slides/${encodeURIComponent(slideId)}.dzi`,
  prefixUrl: "/static/vendor/openseadragon/images/",
  showNavigator: true,
  navigatorPosition: "BOTTOM_RIGHT",
  showRotationControl: true,
  maxZoomPixelRatio: 2,
  zoomPerScroll: 1.5,
  animationTime: 0.4,
  gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
  imageLoaderLimit: 8,
  minZoomImageRatio: 0.25,  // so 5× stays 5× on a small biopsy that fits the screen at 7×
  // The 2D canvas drawer is GPU-accelerated where there is a GPU and, unlike the WebGL one,
  // stays fast on software rendering (virtual desktops, headless): 0.9 s vs 6.5 s to open a slide.
  drawer: "canvas",
});
window.slidebankViewer = viewer;  // for tests and the console

const imageZoom = () => viewer.viewport.viewportToImageZoom(viewer.viewport.getZoom(true));

function zoomToMagnification(magnification) {
  if (!scanMagnification) return;
  viewer.viewport.zoomTo(viewer.viewport.imageToViewportZoom(magnification / scanMagnification));
}

function updateReadouts() {
  const zoom = imageZoom();
  const readout = document.querySelector("#magnification");
  readout.textContent = scanMagnification ? `${(scanMagnification * zoom).toFixed(1)}×` : `${(zoom * 100).toFixed(0)}%`;
  const scalebar = document.querySelector("#scalebar");
  scalebar.hidden = !knownPixelSize;  // a bar of made-up microns would mislead
  if (!knownPixelSize) return;
  const micronsPerScreenPixel = slide.mpp_x / zoom;
  const target = micronsPerScreenPixel * 120;  // aim for a bar about 120 px long
  const power = 10 ** Math.floor(Math.log10(target));
  const nice = [1, 2, 5, 10].map((step) => step * power).filter((length) => length <= target).pop();
  scalebar.querySelector(".bar-line").style.width = `${nice / micronsPerScreenPixel}px`;
  scalebar.querySelector("span").textContent = nice >= 1000 ? `${nice / 1000} mm` : `${nice} µm`;
}
viewer.addHandler("open", updateReadouts);
viewer.addHandler("animation", updateReadouts);
viewer.addHandler("animation-finish", updateReadouts);

for (const button of document.querySelectorAll("[data-magnification]")) {
  button.disabled = !scanMagnification;
  button.addEventListener("click", () => zoomToMagnification(Number(button.dataset.magnification)));
}
// Overlays (heatmaps, the annotation density) take their opacity from one CSS variable on the viewer.
const opacity = document.querySelector("#overlay-opacity");
const applyOpacity = () => document.querySelector("#viewer").style.setProperty("--overlay-opacity", opacity.value);
opacity.addEventListener("input", applyOpacity);
applyOpacity();

function fit() {
  viewer.viewport.goHome();
}
document.querySelector("#fit").addEventListener("click", fit);

// OpenSeadragon pans (arrows, WASD) and zooms (+/-) only while its canvas has the focus: keys pressed
// anywhere else on the page (after clicking a button, say) are handed to it, so they always steer.
const NAVIGATION_KEYS = new Set([
  "ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "KeyW", "KeyA", "KeyS", "KeyD", "Equal", "Minus",
]);
document.addEventListener("keydown", (event) => {
  if (event.target.closest?.("input, textarea, select, [contenteditable]") || event.ctrlKey || event.metaKey || event.altKey) return;
  if (MAGNIFICATIONS[event.key]) zoomToMagnification(MAGNIFICATIONS[event.key]);
  else if (event.key === "Home" || event.key === "0") fit();
  else if (event.code === "NumpadAdd" || event.code === "NumpadSubtract") {
    viewer.viewport.zoomBy(event.code === "NumpadAdd" ? 1.5 : 1 / 1.5);
    viewer.viewport.applyConstraints();
  } else if (NAVIGATION_KEYS.has(event.code) && event.target !== viewer.canvas) {
    viewer.canvas.focus();  // the key's repeats and its release now reach the canvas by themselves
    viewer.canvas.dispatchEvent(new KeyboardEvent("keydown", {
      key: event.key, code: event.code, shiftKey: event.shiftKey, bubbles: true, cancelable: true,
    }));
  } else return;
  event.preventDefault();
});
viewer.canvas.setAttribute("aria-label", document.querySelector("#viewer").getAttribute("aria-label"));
viewer.canvas.focus();
viewer.addHandler("open-failed", () => {
  document.querySelector("#viewer").replaceChildren(
    element("p", { class: "message" }, "The slide's pixels could not be loaded. Reload the page to try again."));
});

const label = (name) => name.replaceAll("_", " ");
const ISO_TIME = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}):\d{2}(\.\d+)?(\+00:00|Z)$/;

function describe(value) {
  // Provenance values as readable text: nested records one "name: value" line each, lists joined.
  if (value === null || value === undefined || value === "") return ["—"];
  if (Array.isArray(value)) {
    if (value.some((item) => item !== null && typeof item === "object")) return value.flatMap(describe);
    return [value.map(String).join(", ")];
  }
  if (typeof value === "object") {
    return Object.entries(value).map(([name, inner]) => element("div", {}, `${label(name)}: `, ...describe(inner)));
  }
  const time = typeof value === "string" && value.match(ISO_TIME);
  return [time ? `${time[1]} ${time[2]} UTC` : String(value)];
}

function showDetails() {
  const rows = [
    ["Dimensions", `${slide.width.toLocaleString()} × ${slide.height.toLocaleString()} px`],
    ["Levels", slide.levels.map((level) => `${Math.round(level.downsample)}×`).join(", ")],
    ["Pixel size", knownPixelSize
      ? `${Number(slide.mpp_x).toFixed(4)} × ${Number(slide.mpp_y).toFixed(4)} µm`
      : "unknown"],
    ["Objective", slide.objective_power ? `${slide.objective_power}×` : "unknown"],
    ["Scanner", [slide.scanner?.manufacturer, slide.scanner?.model].filter(Boolean).join(" ") || slide.vendor],
    ["Original format", slide.original_format],
    ["Dataset", slide.dataset],
    ["Stain", slide.stain], ["Organ", slide.organ], ["Species", slide.species], ["Diagnosis", slide.diagnosis],
    ["Subject", slide.subject],
  ];
  const list = element("dl");
  for (const [name, value] of rows) if (value) list.append(element("dt", {}, name), element("dd", {}, String(value)));
  const provenance = element("dl");
  for (const [name, value] of Object.entries(slide.provenance || {})) {
    provenance.append(element("dt", {}, label(name)), element("dd", {}, ...describe(value)));
  }
  const unknownSize = knownPixelSize ? [] : [element("p", { id: "pixel-size-unknown", class: "notice" },
    "Pixel size unknown: the slide does not say how large its pixels are, so there is no scale bar "
    + "and nothing is measured in micrometres.")];
  document.querySelector("#slide-info").replaceChildren(
    element("h2", {}, "Slide"), ...unknownSize, list, element("h2", {}, "Provenance"), provenance,
    element("p", { class: "muted" }, `Original SHA-256 ${slide.source_sha256}`));
}
showDetails();
const me = await showAccount(() => location.reload());  // what one may do here changes with the session
await Promise.all([
  showQuality(viewer, slide, me, document.querySelector("#quality-panel")),
  showAnnotations(viewer, slide, me, document.querySelector("#annotations-panel")),
]);
