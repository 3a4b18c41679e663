// The account corner of every page: log in with name and password (a session cookie), log out.
// State-changing requests made by pages must send the CSRF token: use `csrfHeaders()`.
const element = (tag, attributes = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.append(...children);
  return node;
};

export function csrfHeaders() {
  const match = document.cookie.match(/(?:^|;\s*)slidebank_csrf=([^;]+)/);
  return match ? { "X-CSRF-Token": decodeURIComponent(match[1]) } : {};
}

async function notices() {
  // Decisions on one's requests, and requests to decide for DAC members.
  const items = await (await fetch("/api/notifications")).json();
  const list = element("ul", { id: "notices" }, ...items.slice().reverse().map((n) => element("li", {}, n.message)));
  return element("details", { class: "notices" }, element("summary", {}, `Notices (${items.length})`), list);
}

export async function showAccount(onChange) {
  const corner = document.querySelector("#account");
  const me = await (await fetch("/api/me")).json();
  if (me.role) {
    const logout = element("button", { type: "button", id: "logout" }, "Log out");
    logout.addEventListener("click", async () => {
      await fetch("/api/session", { method: "DELETE", headers: csrfHeaders() });
      await showAccount(onChange);
      onChange?.();
    });
    corner.replaceChildren(element("span", { id: "who" }, `${me.name} (${me.role.replace("_", " ")})`),
      await notices(), logout);
    return me;
  }
  const form = element("form", { id: "login" },
    element("input", { name: "name", placeholder: "user", autocomplete: "username", required: "" }),
    element("input", { name: "password", type: "password", placeholder: "password", autocomplete: "current-password", required: "" }),
    element("button", { type: "submit" }, "Log in"),
    element("span", { class: "muted", id: "login-error", role: "alert" }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { name: form.elements.name.value, password: form.elements.password.value };
    const response = await fetch("/api/session", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    if (!response.ok) {
      form.querySelector("#login-error").textContent = "wrong name or password";
      return;
    }
    await showAccount(onChange);
    onChange?.();
  });
  corner.replaceChildren(form);
  return me;
}
