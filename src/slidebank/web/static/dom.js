// Small helpers the viewer's panels and the jobs page share: building elements, JSON requests.
import { csrfHeaders } from "./session.js";

export const element = (tag, attributes = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.append(...children);  // strings become text nodes: never parsed as HTML
  return node;
};

export class RequestError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function check(response) {
  if (response.ok) return response;
  let message = response.statusText;
  try {
    const detail = (await response.json()).detail;
    message = typeof detail === "string" ? detail : JSON.stringify(detail);
  } catch { /* not JSON: keep the status text */ }
  throw new RequestError(response.status, message);
}

export async function getJSON(url) {
  return (await check(await fetch(url))).json();
}

// State-changing requests authenticate by the session cookie, so they carry the CSRF header.
export async function send(method, url, body) {
  const response = await check(await fetch(url, {
    method,
    headers: { "Content-Type": "application/json", ...csrfHeaders() },
    body: body === undefined ? undefined : JSON.stringify(body),
  }));
  return response.status === 204 ? null : response.json();
}

export const formatNumber = (value, digits = 2) =>
  typeof value === "number" ? value.toLocaleString(undefined, { maximumFractionDigits: digits }) : String(value ?? "—");

/** Whether the slide's pixel size (µm per level-0 pixel) is known: without it, no scale bar and no µm or mm². */
export const pixelSizeKnown = (slide) =>
  slide.pixel_size_known !== false && Number(slide.mpp_x) > 0 && Number(slide.mpp_y) > 0;
