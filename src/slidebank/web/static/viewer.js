// Slide page: OpenSeadragon on the Deep Zoom source, magnification buttons and readout, scale bar
// from µm/px, keyboard like pathologists' viewers, and the slide's metadata and provenance.
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
// Magnification the scan was made at: the scanner's objective, else the usual 0.25 µm/px = 40×.
const scanMagnification = slide.objective_power || (slide.mpp_x ? 10 / slide.mpp_x : null);

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
  if (!slide.mpp_x) { scalebar.hidden = true; return; }
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
document.querySelector("#fit").addEventListener("click", () => viewer.viewport.goHome());
document.addEventListener("keydown", (event) => {
  if (event.target.matches?.("input, textarea") || event.ctrlKey || event.metaKey || event.altKey) return;
  if (MAGNIFICATIONS[event.key]) zoomToMagnification(MAGNIFICATIONS[event.key]);
  else if (event.key === "Home") viewer.viewport.goHome();
  else return;
  event.preventDefault();
});
document.querySelector("#viewer").focus();  // arrows/WASD pan, +/- zoom, 0 fits: OpenSeadragon's keys

function showDetails() {
  const rows = [
    ["Dimensions", `${slide.width.toLocaleString()} × ${slide.height.toLocaleString()} px`],
    ["Levels", slide.levels.map((level) => `${Math.round(level.downsample)}×`).join(", ")],
    ["µm / pixel", slide.mpp_x ? `${Number(slide.mpp_x).toFixed(4)} × ${Number(slide.mpp_y).toFixed(4)}` : "unknown"],
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
    const shown = typeof value === "object" ? JSON.stringify(value) : String(value);
    provenance.append(element("dt", {}, name.replaceAll("_", " ")), element("dd", {}, shown));
  }
  document.querySelector("#details").replaceChildren(
    element("h2", {}, "Slide"), list, element("h2", {}, "Provenance"), provenance,
    element("p", { class: "muted" }, `Original SHA-256 ${slide.source_sha256}`));
}
showDetails();
showAccount(() => location.reload());
