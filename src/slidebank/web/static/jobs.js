// Jobs page: one's jobs (an administrator's: everyone's), newest first, with state and progress,
// asked again every 2 s while any is queued or running; each job's slides open in the viewer.
import { element, getJSON, send } from "./dom.js";
import { showAccount } from "./session.js";

const POLL_MS = 2000;
const ACTIVE = new Set(["queued", "running"]);
const SLIDES_SHOWN = 20;
const details = new Map();  // job id → the job with its tasks; asked once more only while it changes
let timer = null;

const message = (text) => { document.querySelector("#jobs-message").textContent = text; };
const when = (iso) => (iso ? `${iso.slice(0, 16).replace("T", " ")} UTC` : "");  // the API's times are UTC

async function refresh() {
  clearTimeout(timer);
  let jobs;
  try {
    jobs = await getJSON("/api/jobs");
  } catch (failure) {
    document.querySelector("#jobs").hidden = true;
    message(failure.status === 401 ? "Log in to see your jobs." : `Jobs could not be loaded: ${failure.message}`);
    return;
  }
  // A finished job's tasks do not change: its details are asked for once.
  const stale = jobs.filter((job) => ACTIVE.has(job.state) || details.get(job.id)?.state !== job.state);
  await Promise.all(stale.map(async (job) => {
    const detail = await getJSON(`/api/jobs/${encodeURIComponent(job.id)}`).catch(() => null);
    if (detail) details.set(job.id, detail);  // else asked again next time
  }));
  render(jobs);
  document.querySelector("#jobs-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  if (jobs.some((job) => ACTIVE.has(job.state))) timer = setTimeout(refresh, POLL_MS);
}

function render(jobs) {
  message(jobs.length ? "" : "No jobs yet. Run an algorithm from a slide's page.");
  const table = document.querySelector("#jobs");
  table.hidden = !jobs.length;
  table.querySelector("tbody").replaceChildren(...jobs.map((job) => {
    const tasks = details.get(job.id)?.tasks || [];
    const { done, total } = job.progress;
    const state = element("td", {}, element("span", { class: `state state-${job.state}` }, job.state));
    if (job.error) state.append(element("div", { class: "error" }, job.error));
    if (ACTIVE.has(job.state)) {
      const cancel = element("button", { type: "button", class: "cancel" }, "Cancel");
      cancel.addEventListener("click", async () => {
        cancel.disabled = true;
        await send("POST", `/api/jobs/${encodeURIComponent(job.id)}/cancel`).catch((failure) => message(failure.message));
        refresh();
      });
      state.append(" ", cancel);
    }
    const linked = location.hash === `#${job.id}`;  // opened from an annotation's provenance link
    return element("tr", { id: job.id, "data-job": job.id, "data-state": job.state, class: linked ? "linked" : "" },
      element("td", {}, `${job.algorithm} ${job.version}`, element("div", { class: "muted" }, job.id.slice(0, 8))),
      state,
      element("td", { class: "progress" },
        element("progress", { max: String(total || 1), value: String(done) }), ` ${done} / ${total}`),
      element("td", {}, slideList(tasks)),
      element("td", {}, job.requester, element("div", { class: "muted" }, when(job.created_at))));
  }));
}

function slideList(tasks) {
  const list = element("ul", { class: "job-slides" }, ...tasks.slice(0, SLIDES_SHOWN).map((task) => {
    const item = element("li", { "data-slide-id": task.slide_id },
      element("a", { href: `/view/${encodeURIComponent(task.slide_id)}` }, task.slide_id));
    if (task.state !== "done") item.append(" ", element("span", { class: `state state-${task.state}` }, task.state));
    const flags = task.summary?.flags || [];
    if (flags.length) item.append(element("div", { class: "qc-flagged" }, `⚠ ${flags.join("; ")}`));
    if (task.error) item.append(element("div", { class: "error" }, task.error));
    return item;
  }));
  if (tasks.length > SLIDES_SHOWN) list.append(element("li", { class: "muted" }, `and ${tasks.length - SLIDES_SHOWN} more`));
  return list;
}

await showAccount(refresh);
refresh();
