// Catalog page: search box, facet filters with counts, thumbnail grid, paging — over /api/search.
import { showAccessPanel } from "./access.js";
import { showAccount } from "./session.js";

const FACETS = ["dataset", "species", "organ", "stain", "vendor", "diagnosis"];
const PAGE_SIZE = 24;
const FACET_VALUES_SHOWN = 20;
const state = { text: "", offset: 0, facetLimit: FACET_VALUES_SHOWN,
                selected: Object.fromEntries(FACETS.map((f) => [f, new Set()])) };

const element = (tag, attributes = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.append(...children);  // strings become text nodes: never parsed as HTML
  return node;
};

function query() {
  const params = new URLSearchParams({ limit: PAGE_SIZE, offset: state.offset, facet_limit: state.facetLimit });
  if (state.text) params.set("text", state.text);
  for (const facet of FACETS) for (const value of state.selected[facet]) params.append(facet, value);
  return params;
}

async function refresh() {
  const response = await fetch(`/api/search?${query()}`);
  const result = await response.json();
  showFacets(result.facets, result.facet_values || {});
  showResults(result.items);
  document.querySelector("#total").textContent = `${result.total} slide${result.total === 1 ? "" : "s"}`;
  const page = Math.floor(state.offset / PAGE_SIZE) + 1;
  const pages = Math.max(1, Math.ceil(result.total / PAGE_SIZE));
  document.querySelector("#page").textContent = `page ${page} of ${pages}`;
  document.querySelector("#previous").disabled = state.offset === 0;
  document.querySelector("#next").disabled = state.offset + PAGE_SIZE >= result.total;
}

function showFacets(facets, valueCounts) {
  const container = document.querySelector("#facets");
  container.replaceChildren();
  for (const facet of FACETS) {
    const values = facets[facet] || [];
    if (!values.length) continue;
    const fieldset = element("fieldset", { "data-facet": facet }, element("legend", {}, facet));
    for (const [value, count] of values) {
      const box = element("input", { type: "checkbox", value });
      box.checked = state.selected[facet].has(value);
      box.addEventListener("change", () => {
        box.checked ? state.selected[facet].add(value) : state.selected[facet].delete(value);
        state.offset = 0;
        refresh();
      });
      fieldset.append(element("label", {}, box, value, element("span", { class: "count" }, String(count))));
    }
    const hidden = (valueCounts[facet] || 0) - values.length;
    if (hidden > 0) {  // the most frequent values come first; the rest on request
      const more = element("button", { type: "button", class: "more" }, `${hidden} more…`);
      more.addEventListener("click", () => { state.facetLimit = 100000; refresh(); });
      fieldset.append(more);
    }
    container.append(fieldset);
  }
}

function showResults(items) {
  const list = document.querySelector("#results");
  list.replaceChildren(...items.map((slide) => {
    const id = encodeURIComponent(slide.slide_id);
    const facts = [slide.stain, slide.organ, slide.species].filter(Boolean).join(" · ");
    return element("li", { class: "card", "data-slide-id": slide.slide_id },
      element("a", { href: `/view/${id}` },
        element("img", { src: `/api/slides/${id}/thumbnail.jpg`, alt: `thumbnail of ${slide.slide_id}`, loading: "lazy" }),
        element("div", { class: "meta" },
          element("div", { class: "id" }, slide.slide_id),
          element("div", {}, facts || "—"),
          element("div", { class: "muted" }, `${slide.width.toLocaleString()} × ${slide.height.toLocaleString()} px · ${slide.dataset}`))));
  }));
}

document.querySelector("#search").addEventListener("submit", (event) => {
  event.preventDefault();
  state.text = document.querySelector("#text").value.trim();
  state.offset = 0;
  refresh();
});
document.querySelector("#previous").addEventListener("click", () => { state.offset -= PAGE_SIZE; refresh(); });
document.querySelector("#next").addEventListener("click", () => { state.offset += PAGE_SIZE; refresh(); });
async function refreshAll() {  // logging in or out, or a decision, changes what one may see
  const me = await showAccount(refreshAll);
  await showAccessPanel(me, refreshAll);
  state.offset = 0;
  await refresh();
}
refreshAll();
