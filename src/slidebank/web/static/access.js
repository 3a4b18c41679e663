// The governance panel of the catalog page: datasets and their terms, "request access" for a
// logged-in researcher, and the pending requests a DAC member decides.
import { csrfHeaders } from "./session.js";

const element = (tag, attributes = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.append(...children);
  return node;
};

async function send(method, url, body) {
  const response = await fetch(url, {
    method, headers: { "Content-Type": "application/json", ...csrfHeaders() }, body: JSON.stringify(body),
  });
  if (!response.ok) throw new Error((await response.json()).detail || response.statusText);
  return response.json();
}

export async function showAccessPanel(me, onChange) {
  const panel = document.querySelector("#access-panel");
  const datasets = await (await fetch("/api/datasets")).json();
  const readable = me.readable_datasets === null ? null : new Set(me.readable_datasets || []);
  const requests = me.role ? await (await fetch("/api/access-requests")).json() : [];
  const asked = new Set(requests.filter((r) => r.user === me.name && r.status === "pending").map((r) => r.dataset));

  const list = element("ul", { class: "datasets" });
  for (const dataset of datasets) {
    const item = element("li", { "data-dataset": dataset.name },
      element("strong", {}, dataset.name), ` · ${slideCount(dataset)}`,
      element("div", { class: "muted" }, dataset.terms || dataset.policy));
    const open = readable === null || readable.has(dataset.name);
    if (me.role && !open) {
      if (asked.has(dataset.name)) item.append(element("div", { class: "muted" }, "access requested"));
      else item.append(requestForm(dataset.name, onChange));
    }
    list.append(item);
  }
  const pending = requests.filter((r) => r.status === "pending" && (me.committees || []).includes(r.dataset));
  const decisions = element("ul", { class: "decisions" }, ...pending.map((r) => decisionForm(r, onChange)));
  panel.replaceChildren(element("h2", {}, "Datasets"), list,
    ...(pending.length ? [element("h2", {}, "Requests to decide"), decisions] : []));
}

function requestForm(dataset, onChange) {
  const form = element("form", { class: "request" },
    element("input", { name: "purpose", placeholder: "purpose of use", required: "", maxlength: "4000" }),
    element("button", { type: "submit" }, "Request access"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    await send("POST", "/api/access-requests", { dataset, purpose: form.elements.purpose.value });
    onChange();
  });
  return form;
}

function decisionForm(request, onChange) {
  const nextYear = new Date(Date.now() + 365 * 864e5).toISOString().slice(0, 10);
  const expires = element("input", { type: "date", name: "expires", value: nextYear, required: "" });
  const reason = element("input", { name: "reason", placeholder: "reason to reject" });
  const approve = element("button", { type: "button", class: "approve" }, "Approve");
  const reject = element("button", { type: "button", class: "reject" }, "Reject");
  approve.addEventListener("click", async () => {
    await send("POST", `/api/access-requests/${request.id}/approve`, { expires: expires.value });
    onChange();
  });
  reject.addEventListener("click", async () => {
    await send("POST", `/api/access-requests/${request.id}/reject`, { reason: reason.value || "not granted" });
    onChange();
  });
  return element("li", { "data-request": request.id },
    `${request.user} → ${request.dataset}: ${request.purpose}`, element("br"), expires, approve, reason, reject);
}

/** A dataset's size as the server may tell it: exact, or (controlled, not readable) rounded down. */
function slideCount(dataset) {
  if (!dataset.images_exact) {
    return dataset.images === 0 ? "fewer than 10 slides" : `${dataset.images} or more slides`;
  }
  return `${dataset.images} slide${dataset.images === 1 ? "" : "s"}`;
}
