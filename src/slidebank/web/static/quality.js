// The viewer's quality panel: the slide's QC numbers (with a warning when QC flagged it), its
// heatmaps as switchable overlays over the whole slide (their opacity is the viewer's overlay
// opacity), and running an algorithm on the slide.
import { element, formatNumber, getJSON, pixelSizeKnown, send } from "./dom.js";

function percent(fraction) {
  // Never "0 %" for some, nor "100 %" for not all: the words must agree with the counts beside them.
  const value = fraction * 100;
  if (value > 0 && value < 0.1) return "< 0.1 %";
  if (value < 100 && value > 99.9) return "> 99.9 %";
  return `${formatNumber(value, 1)} %`;
}

function outOfFocus(qc) {
  // QC counts out-of-focus tiles among the tissue tiles it measured: say so, with the counts.
  const tiles = qc.focus_tiles;
  const blurred = qc.blurred_tiles;
  if (typeof tiles !== "number" || typeof blurred !== "number") return `${percent(qc.blur_fraction)} of tissue tiles`;
  if (!tiles) return "no tissue tile measured";
  return `${formatNumber(blurred, 0)} of ${formatNumber(tiles, 0)} tissue tiles (${percent(qc.blur_fraction)})`;
}

const QC_ROWS = [  // [value in slide.qc, label, how to show it (from all of qc), measured in µm]
  ["tissue_area_mm2", "Tissue area", (qc) => `${formatNumber(qc.tissue_area_mm2, 3)} mm²`, true],
  ["tissue_fraction", "Tissue fraction", (qc) => `${percent(qc.tissue_fraction)} of the slide`],
  ["blur_fraction", "Out of focus", outOfFocus],
  ["pen_fraction", "Pen marks", (qc) => `${percent(qc.pen_fraction)} of tissue`],
  ["fold_fraction", "Folds", (qc) => `${percent(qc.fold_fraction)} of tissue`],
];

// The colours heatmaps are drawn with (src/slidebank/annotations/heatmap.py), from 0 to 1.
const COLORMAPS = {
  inferno: [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]],
  green: [[0, 120, 0], [0, 230, 60]],
  red: [[120, 0, 0], [255, 40, 40]],
};

function qcSummary(qc, knownPixelSize) {
  if (!qc || !Object.keys(qc).length) return [element("p", { class: "muted" }, "No quality control yet.")];
  const flags = typeof qc.flags === "string" ? qc.flags : (qc.flags || []).join("; ");
  const verdict = qc.passed === 0
    ? element("p", { id: "qc-flagged", class: "qc-flagged", role: "alert" }, "⚠ QC flagged", flags ? `: ${flags}` : "")
    : element("p", { id: "qc-passed", class: "qc-passed" }, qc.passed === 1 ? "✓ QC passed" : "QC: no verdict");
  const list = element("dl", { id: "qc-values" });
  for (const [name, title, show, inMicrons] of QC_ROWS) {
    if (inMicrons && !knownPixelSize) continue;  // a number from a made-up pixel size means nothing
    if (typeof qc[name] === "number") {
      list.append(element("dt", {}, title), element("dd", { "data-qc": name }, show(qc)));
    }
  }
  const unknownSize = knownPixelSize ? []
    : [element("p", { id: "qc-pixel-size", class: "muted" }, "Pixel size unknown: tissue area cannot be measured.")];
  return [verdict, list, ...unknownSize];
}

function legend(heatmap) {
  // The legend describes the scale, not counts: {"0": "sharp", "1": "out of focus", "colormap": …}
  // reads "sharp ← → out of focus" over the colour ramp; a mask {"1": "tissue"} a swatch and "tissue".
  const meanings = Object.entries(heatmap.legend || {})
    .filter(([value, meaning]) => typeof meaning === "string" && value.trim() !== "" && Number.isFinite(Number(value)))
    .sort(([a], [b]) => Number(a) - Number(b))
    .map(([, meaning]) => meaning);
  const anchors = COLORMAPS[heatmap.legend?.colormap];
  const node = element("div", { class: "legend muted" });
  if (meanings.length === 1) {
    const color = anchors ? anchors.at(-1) : null;
    if (color) node.append(element("span", { class: "swatch", style: `background:rgb(${color.join(",")})` }));
    node.append(`shaded: ${meanings[0]}`);
  } else if (meanings.length > 1) {
    const ramp = anchors ? [element("span", {
      class: "ramp", "aria-hidden": "true",
      style: `background:linear-gradient(to right, ${anchors.map((c) => `rgb(${c.join(",")})`).join(", ")})`,
    })] : [];
    node.append(`${meanings[0]} ←`, ...ramp, `→ ${meanings.at(-1)}`);
    if (meanings.length > 2) node.title = meanings.join(" → ");
  }
  return node;
}

export async function showQuality(viewer, slide, me, panel) {
  const base = `/api/slides/${encodeURIComponent(slide.slide_id)}`;
  const heatmaps = await getJSON(`${base}/heatmaps`).catch(() => []);
  const overlays = new Map();  // heatmap name → its <img> on the slide

  // An HTML overlay stretched over the part of the slide the grid covers (its `extent` in level-0
  // pixels: whole tiles reach past the slide's edges; the whole slide when the server does not say),
  // not an OpenSeadragon image: it must be stretched in both directions, and the world keeps one image.
  function location(heatmap) {
    const slideImage = viewer.world.getItemAt(0);
    const [width, height] = Array.isArray(heatmap.extent) ? heatmap.extent : [];
    return width > 0 && height > 0 ? slideImage.imageToViewportRectangle(0, 0, width, height) : slideImage.getBounds();
  }

  function showHeatmap(heatmap, on) {
    const { name } = heatmap;
    if (!on) {
      if (overlays.has(name)) viewer.removeOverlay(overlays.get(name));
      overlays.delete(name);
      return;
    }
    const image = element("img", {
      class: "heatmap-overlay", "data-heatmap": name, alt: `${name} heatmap`,
      src: `${base}/heatmaps/${encodeURIComponent(name)}.png`,
    });
    overlays.set(name, image);
    const place = () => viewer.addOverlay({ element: image, location: location(heatmap) });
    if (viewer.world.getItemCount()) place();
    else viewer.addOnceHandler("open", place);
  }

  const list = element("ul", { id: "heatmaps", class: "heatmaps" }, ...heatmaps.map((heatmap) => {
    const box = element("input", { type: "checkbox", value: heatmap.name });
    box.addEventListener("change", () => showHeatmap(heatmap, box.checked));
    return element("li", { "data-heatmap": heatmap.name }, element("label", {}, box, heatmap.name), legend(heatmap));
  }));

  panel.replaceChildren(
    element("h2", {}, "Quality control"), ...qcSummary(slide.qc, pixelSizeKnown(slide)),
    element("h2", {}, "Heatmaps"),
    ...(heatmaps.length ? [list] : [element("p", { class: "muted" }, "None yet.")]),
    ...(me.role ? [await runForm(slide)] : []));
}

async function runForm(slide) {
  // Any installed algorithm on this slide, as a job of the caller's; the jobs page follows it.
  const algorithms = await getJSON("/api/algorithms").catch(() => []);
  const choice = element("select", { name: "algorithm", "aria-label": "algorithm" },
    ...algorithms.map((a) => element("option", { value: a.name, title: a.description || "" }, `${a.name} ${a.version}`)));
  const outcome = element("span", { class: "muted", role: "status" });
  const run = element("button", { type: "submit" }, "Run");
  const form = element("form", { id: "run-algorithm", class: "run" }, choice, run, outcome);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const job = await send("POST", "/api/jobs", { algorithm: choice.value, slides: [slide.slide_id] });
      outcome.replaceChildren(`${job.algorithm} ${job.state} · `, element("a", { href: "/jobs" }, "see jobs"));
    } catch (failure) {
      outcome.textContent = `Not started: ${failure.message}`;
    }
  });
  return element("section", {}, element("h2", {}, "Process"),
    algorithms.length ? form : element("p", { class: "muted" }, "No algorithms installed."));
}
