// The page: log in when the worker wants a token, list the tools, build a form for the chosen one, start runs
// and show them live. State for tests and scripts: body[data-auth] (checking | login | ok | open),
// body[data-tools] (tools listed), body[data-socket] (open | closed), body[data-microphone] (on | off).
// A tool that reads an input stream gets it from the page: binary items (PCM frames) from the microphone, JSON
// items from the form's "input" field.

import { ApiError, authState, listTools, login, logout } from "./api.js";
import { el } from "./dom.js";
import { FormError, schemaForm } from "./form.js";
import { InputFeed, ItemsFeed } from "./input.js";
import { Microphone } from "./microphone.js";
import { MICROPHONE, available, hasMicrophoneTool } from "./presets.js";
import { Run } from "./run.js";
import { CallSocket, socketUrl } from "./socket.js";

const $ = (selector) => document.querySelector(selector);
const socket = new CallSocket(socketUrl());
const microphone = new Microphone();
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
  // the microphone is never in "Start all": it asks the user first
  const mic = hasMicrophoneTool(tools)
    ? [el("button", { type: "button", "data-preset": MICROPHONE.id, title: "analyse_stream of this browser's microphone", text: MICROPHONE.label })]
    : [];
  const hint = presets.length ? "Choose a tool on the left, or start a ready-made run:" : "Choose a tool on the left.";
  $("#presets").replaceChildren(el("span", { class: "muted", text: hint }), ...(presets.length ? [...buttons, ...mic, all] : mic));
  $("#presets").hidden = false;
  $("#presets").onclick = (event) => {
    const id = event.target.closest("[data-preset]")?.dataset.preset;
    if (id === MICROPHONE.id) return startMicrophone();
    for (const p of presets) if (id === "all" || id === p.id) launch(p.tool, p.args, { overflow: p.overflow || "latest", rate: 30 });
  };
}

/** The microphone's level meter, spectrum and tuner: three runs of analyse_stream fed by one capture. */
async function startMicrophone() {
  showError($("#fatal"), null);
  try {
    await microphone.start();
  } catch (err) {
    return showError($("#fatal"), new Error(`The microphone could not be opened: ${err.message}`));
  }
  for (const args of MICROPHONE.runs) {
    // every chunk (overflow block, no transport limit): the tool's own max_rate_hz paces the chunks
    launch(MICROPHONE.tool, { sample_rate: microphone.sampleRate, ...args }, { overflow: "block", rate: 0, input: new InputFeed(microphone) });
  }
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
  const input = inputField(tool);
  const problem = el("p", { class: "form-error", hidden: true, role: "alert" });
  const start = el("button", { type: "submit", class: "start", "data-action": "start", text: tool.streaming ? "Start" : "Call" });
  const node = el("form", { "data-tool-form": tool.name, novalidate: true },
    el("h2", { text: tool.name }), el("p", { class: "muted", text: tool.description || "" }), form.node, input?.node, delivery, problem, start);
  node.addEventListener("submit", async (event) => {
    event.preventDefault();
    let args;
    let feed = null;
    try {
      if (input) feed = await input.read(node);
      args = form.read();
    } catch (err) {
      feed?.detach(); // the microphone opened for a run that does not start: released
      if (!(err instanceof FormError)) throw err;
      showError(problem, err);
      node.querySelector(`[data-param="${CSS.escape(err.path.replace(/\[\d+\]$/, ""))}"]`)?.focus();
      return;
    }
    showError(problem, null);
    startRun(tool, args, node, feed);
  });
  panel.replaceChildren(node);
  renderTools();
  history.replaceState(null, "", `#tool=${encodeURIComponent(tool.name)}`);
}

/** The input of a tool that reads an input stream: {node, read(form) -> a feed} (FormError when it cannot). */
function inputField(tool) {
  if (!tool.input) return null;
  const name = tool.input_param || "input";
  if (tool.input["x-krait-binary"] || tool.input.contentMediaType) {
    const node = el("fieldset", { class: "delivery", "data-input-field": name }, el("legend", { text: `Input: ${name}` }),
      el("p", { class: "muted", text: "PCM frames from this browser's microphone (float32, mono)" }));
    return {
      node,
      read: async (form) => {
        try {
          await microphone.start();
        } catch (err) {
          throw new FormError(name, `the microphone could not be opened: ${err.message}`);
        }
        const rate = form.querySelector('[data-param="sample_rate"]');
        if (rate && rate.value.trim() === "") rate.value = String(microphone.sampleRate); // the rate it records at
        return new InputFeed(microphone);
      },
    };
  }
  const text = el("textarea", { rows: 3, placeholder: "a JSON list of items, e.g. [1, 2, 3]", "data-param": name });
  const node = el("div", { class: "field field-json", "data-field": name },
    el("label", { text: `${name} (input stream)` }), text, el("small", { class: "help", text: "sent as the tool reads them, then the input ends" }));
  return {
    node,
    read: async () => {
      let items;
      try {
        items = JSON.parse(text.value.trim() || "[]");
      } catch {
        throw new FormError(name, "is not valid JSON: give a JSON list of items");
      }
      if (!Array.isArray(items)) throw new FormError(name, "is not a list: give a JSON list of items");
      return new ItemsFeed(items);
    },
  };
}

function startRun(tool, args, formNode, input = null) {
  const delivery = tool.streaming
    ? {
        rate: Number(formNode.querySelector('[data-option="max_rate_hz"]').value),
        overflow: formNode.querySelector('[data-option="overflow"]').value,
      }
    : {};
  launch(tool.name, args, { ...delivery, input });
}

/** Start a run of `name`; delivery: {rate (chunks/s, 0 = no limit), overflow} for a streaming tool; input: the
 * feed of a tool that reads an input stream (input.js). */
function launch(name, args, { rate = 0, overflow, input = null } = {}) {
  const tool = tools.find((t) => t.name === name);
  const request = { tool: name, args, session: $("#session").value.trim() || undefined };
  if (tool.streaming) {
    if (rate > 0) request.max_rate_hz = rate;
    request.overflow = overflow;
  }
  const run = new Run(socket, request, { streaming: tool.streaming, onAuthLost: () => setAuth("login"), input });
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
