// The page: log in when the worker wants a token, list the tools, build a form for the chosen one, start runs
// and show them live. State for tests and scripts: body[data-auth] (checking | login | ok | open),
// body[data-tools] (tools listed), body[data-socket] (open | closed).

import { ApiError, authState, listTools, login, logout } from "./api.js";
import { el } from "./dom.js";
import { FormError, schemaForm } from "./form.js";
import { available } from "./presets.js";
import { Run } from "./run.js";
import { CallSocket, socketUrl } from "./socket.js";

const $ = (selector) => document.querySelector(selector);
const socket = new CallSocket(socketUrl());
socket.onstate = async (state) => {
  document.body.dataset.socket = state;
  if (state !== "closed" || !["ok", "open"].includes(document.body.dataset.auth)) return;
  // a refused handshake (an expired session) looks like any closed socket: ask whether we are still logged in
  try {
    const auth = await authState();
    if (auth.required && !auth.authenticated) setAuth("login");
  } catch {
    /* the worker is gone: the runs show it */
  }
};

let tools = [];
let current = null; // {tool, form}

function setAuth(state) {
  document.body.dataset.auth = state;
  $("#login").hidden = state !== "login";
  $("#app").hidden = !(state === "ok" || state === "open");
  $("#logout").hidden = state !== "ok";
}

function showError(target, err) {
  target.textContent = err ? (err instanceof ApiError ? `${err.code}: ${err.message}` : err.message) : "";
  target.hidden = !err;
}

/** A token in the address's fragment (`#token=...`, as `serve` prints the page's URL): taken out of the address
 * bar and history at once (the fragment never reaches the worker), then used to log in. */
function takeFragmentToken() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (token === null) return null;
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", `${location.pathname}${location.search}${rest ? `#${rest}` : ""}`);
  return token;
}

async function boot() {
  setAuth("checking");
  const token = takeFragmentToken();
  if (token) {
    try {
      await login(token);
    } catch (err) {
      setAuth("login");
      return showError($("#login-error"), err.status === 401 ? new Error("The token in the address was not accepted.") : err);
    }
  }
  try {
    const auth = await authState();
    if (auth.required && !auth.authenticated) return setAuth("login");
    setAuth(auth.required ? "ok" : "open");
    await loadTools();
  } catch (err) {
    showError($("#fatal"), err);
  }
}

async function loadTools() {
  try {
    const listing = await listTools();
    tools = listing.tools;
    $("#worker").textContent = `${listing.adapter} · ${listing.worker_id}`;
    renderTools();
    renderPresets();
    document.body.dataset.tools = String(tools.length);
    const wanted = new URLSearchParams(location.hash.slice(1)).get("tool");
    if (wanted) select(wanted);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return setAuth("login");
    showError($("#fatal"), err);
  }
}

function renderTools() {
  const filter = $("#filter").value.trim().toLowerCase();
  const list = $("#tool-list");
  list.replaceChildren(
    ...tools
      .filter((t) => !filter || t.name.toLowerCase().includes(filter) || (t.description || "").toLowerCase().includes(filter))
      .map((t) =>
        el("li", {},
          el("button", { type: "button", class: current?.tool.name === t.name ? "tool selected" : "tool", "data-tool": t.name, title: t.description || "" },
            el("span", { class: "name", text: t.name }),
            el("span", { class: `badge ${t.streaming ? "stream" : "unary"}`, text: t.streaming ? "stream" : "unary" }))),
      ),
  );
}

function renderPresets() {
  const presets = available(tools);
  const buttons = presets.map((p) =>
    el("button", { type: "button", "data-preset": p.id, title: `${p.tool} ${JSON.stringify(p.args)}`, text: p.label }),
  );
  const all = el("button", { type: "button", class: "start", "data-preset": "all", text: "Start all" });
  const hint = presets.length ? "Choose a tool on the left, or start a ready-made run:" : "Choose a tool on the left.";
  $("#presets").replaceChildren(el("span", { class: "muted", text: hint }), ...(presets.length ? [...buttons, all] : []));
  $("#presets").hidden = false;
  $("#presets").onclick = (event) => {
    const id = event.target.closest("[data-preset]")?.dataset.preset;
    for (const p of presets) if (id === "all" || id === p.id) launch(p.tool, p.args, { overflow: p.overflow || "latest", rate: 30 });
  };
}

function select(name) {
  const tool = tools.find((t) => t.name === name);
  if (!tool) return;
  const form = schemaForm(tool.parameters);
  current = { tool, form };
  const panel = $("#tool");
  const delivery = tool.streaming
    ? el("fieldset", { class: "delivery" }, el("legend", { text: "Delivery" }),
        el("label", {}, "at most ", el("input", { type: "number", min: "0", step: "any", value: "30", "data-option": "max_rate_hz" }), " chunks/s"),
        el("label", {}, "when behind ",
          el("select", { "data-option": "overflow" },
            el("option", { value: "latest", text: "keep the latest (skip)", selected: true }),
            el("option", { value: "block", text: "pause the tool (every chunk)" }))))
    : null;
  const problem = el("p", { class: "form-error", hidden: true, role: "alert" });
  const start = el("button", { type: "submit", class: "start", "data-action": "start", text: tool.streaming ? "Start" : "Call" });
  const node = el("form", { "data-tool-form": tool.name, novalidate: true },
    el("h2", { text: tool.name }), el("p", { class: "muted", text: tool.description || "" }), form.node, delivery, problem, start);
  node.addEventListener("submit", (event) => {
    event.preventDefault();
    let args;
    try {
      args = form.read();
    } catch (err) {
      if (!(err instanceof FormError)) throw err;
      showError(problem, err);
      node.querySelector(`[data-param="${CSS.escape(err.path.replace(/\[\d+\]$/, ""))}"]`)?.focus();
      return;
    }
    showError(problem, null);
    startRun(tool, args, node);
  });
  panel.replaceChildren(node);
  renderTools();
  history.replaceState(null, "", `#tool=${encodeURIComponent(tool.name)}`);
}

function startRun(tool, args, formNode) {
  const delivery = tool.streaming
    ? {
        rate: Number(formNode.querySelector('[data-option="max_rate_hz"]').value),
        overflow: formNode.querySelector('[data-option="overflow"]').value,
      }
    : {};
  launch(tool.name, args, delivery);
}

/** Start a run of `name`; delivery: {rate (chunks/s, 0 = no limit), overflow} for a streaming tool. */
function launch(name, args, { rate = 0, overflow } = {}) {
  const tool = tools.find((t) => t.name === name);
  const request = { tool: name, args, session: $("#session").value.trim() || undefined };
  if (tool.streaming) {
    if (rate > 0) request.max_rate_hz = rate;
    request.overflow = overflow;
  }
  const run = new Run(socket, request, { streaming: tool.streaming, onAuthLost: () => setAuth("login") });
  $("#runs").prepend(run.node);
  run.start();
}

$("#login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("#token");
  showError($("#login-error"), null);
  try {
    await login(input.value);
    input.value = "";
    setAuth("ok");
    await loadTools();
  } catch (err) {
    showError($("#login-error"), err.status === 401 ? new Error("That token was not accepted.") : err);
  }
});

$("#logout").addEventListener("click", async () => {
  socket.close();
  try {
    await logout();
  } finally {
    setAuth("login");
  }
});

$("#filter").addEventListener("input", renderTools);
$("#tool-list").addEventListener("click", (event) => {
  const button = event.target.closest("[data-tool]");
  if (button) select(button.dataset.tool);
});
$("#session").value = sessionStorage.getItem("krait-session") || `page-${crypto.randomUUID().slice(0, 8)}`;
sessionStorage.setItem("krait-session", $("#session").value);
$("#session").addEventListener("change", () => sessionStorage.setItem("krait-session", $("#session").value));

boot();
