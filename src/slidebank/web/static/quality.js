// The viewer's quality panel: the slide's QC numbers (with a warning when QC flagged it), its
// heatmaps as switchable overlays over the whole slide, and running an algorithm on the slide.
import { element, formatNumber, getJSON, send } from "./dom.js";

const QC_ROWS = [  // [value in slide.qc, label, how to show it]
  ["tissue_area_mm2", "Tissue area", (v) => `${formatNumber(v, 3)} mm²`],
  ["tissue_fraction", "Tissue fraction", (v) => `${formatNumber(v * 100, 1)} %`],
  ["blur_fraction", "Out of focus", (v) => `${formatNumber(v * 100, 1)} % of tissue`],
  ["pen_fraction", "Pen marks", (v) => `${formatNumber(v * 100, 1)} %`],
  ["fold_fraction", "Folds", (v) => `${formatNumber(v * 100, 1)} %`],
];
const HEATMAP_OPACITY = 0.5;

function qcSummary(qc) {
  if (!qc || !Object.keys(qc).length) return [element("p", { class: "muted" }, "No quality control yet.")];
  const flags = typeof qc.flags === "string" ? qc.flags : (qc.flags || []).join("; ");
  const verdict = qc.passed === 0
    ? element("p", { id: "qc-flagged", class: "qc-flagged", role: "alert" }, "⚠ QC flagged", flags ? `: ${flags}` : "")
    : element("p", { id: "qc-passed", class: "qc-passed" }, qc.passed === 1 ? "✓ QC passed" : "QC: no verdict");
  const list = element("dl", { id: "qc-values" });
  for (const [name, title, show] of QC_ROWS) {
    if (typeof qc[name] === "number") list.append(element("dt", {}, title), element("dd", {}, show(qc[name])));
  }
  return [verdict, list];
}

function legendText(legend) {
  // {"1": "tissue", "colormap": "green", "extent": [..]} → "1 tissue · green"
  const entries = Object.entries(legend || {})
    .filter(([key, meaning]) => key !== "colormap" && typeof meaning === "string");
  const text = entries.map(([value, meaning]) => `${value} ${meaning}`).join(" · ");
  return [text, legend?.colormap].filter(Boolean).join(" · ");
}

export async function showQuality(viewer, slide, me, panel) {
  const base = `/api/slides/${encodeURIComponent(slide.slide_id)}`;
  const heatmaps = await getJSON(`${base}/heatmaps`).catch(() => []);
  const overlays = new Map();  // heatmap name → its <img> on the slide
  let opacity = HEATMAP_OPACITY;

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
    image.style.opacity = opacity;
    overlays.set(name, image);
    const place = () => viewer.addOverlay({ element: image, location: location(heatmap) });
    if (viewer.world.getItemCount()) place();
    else viewer.addOnceHandler("open", place);
  }

  const list = element("ul", { id: "heatmaps", class: "heatmaps" }, ...heatmaps.map((heatmap) => {
    const box = element("input", { type: "checkbox", value: heatmap.name });
    box.addEventListener("change", () => showHeatmap(heatmap, box.checked));
    return element("li", { "data-heatmap": heatmap.name }, element("label", {}, box, heatmap.name),
      element("div", { class: "muted" }, legendText(heatmap.legend)));
  }));
  const slider = element("input", {
    type: "range", min: "0.1", max: "1", step: "0.1", value: String(opacity), "aria-label": "heatmap opacity",
  });
  slider.addEventListener("input", () => {
    opacity = Number(slider.value);
    for (const image of overlays.values()) image.style.opacity = opacity;
  });

  panel.replaceChildren(
    element("h2", {}, "Quality control"), ...qcSummary(slide.qc),
    element("h2", {}, "Heatmaps"),
    ...(heatmaps.length
      ? [list, element("label", { class: "opacity" }, "Opacity ", slider)]
      : [element("p", { class: "muted" }, "None yet.")]),
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
