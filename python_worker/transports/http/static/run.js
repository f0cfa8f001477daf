// One run of a tool: its panel (status, stop, live views, final state) and its call on the shared socket.
// The panel's data-state goes running -> done | error | cancelled (cancelling while a stop is on its way);
// data-chunks counts the chunks received, data-dropped the ones the worker left out to keep up
// (overflow=latest) as the final metadata reports them. A run fed by the page (the microphone) also has
// data-input (streaming | ended), data-input-sent and data-input-dropped (frames sent, frames dropped to keep up).

import { el } from "./dom.js";
import { ViewSet, describe } from "./views.js";

let runs = 0;

function metadataTable(metadata) {
  const entries = Object.entries(metadata || {});
  if (!entries.length) return null;
  return el("table", { class: "meta" }, el("tbody", {}, ...entries.map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: String(v) })))));
}

export class Run {
  /** socket: CallSocket; request: {tool, args, session, max_rate_hz, overflow}; input: an InputFeed
   * (microphone.js) streaming the tool's input, or null */
  constructor(socket, request, { streaming, onAuthLost = () => {}, input = null } = {}) {
    this.socket = socket;
    this.request = input ? { ...request, input: true } : request;
    this.input = input;
    this.streaming = streaming;
    this.onAuthLost = onAuthLost;
    this.number = ++runs;
    this.call = null;
    // a run fed by the page stops by ending its input: the tool reads the end and finishes (state done)
    const stopText = input ? "Stop input" : streaming ? "Stop" : "Cancel";
    this.stopButton = el("button", { type: "button", class: "stop", "data-action": "stop", text: stopText });
    this.closeButton = el("button", { type: "button", class: "close", "data-action": "close", title: "Remove", text: "×" });
    this.status = el("span", { class: "status", text: "starting" });
    this.views = el("div", { class: "views" });
    this.final = el("div", { class: "final", "data-final": "" });
    const args = JSON.stringify(request.args);
    this.node = el(
      "article",
      { class: "run", "data-run": String(this.number), "data-tool": request.tool, "data-state": "starting", "data-chunks": "0" },
      el("header", {}, el("h3", { text: `${request.tool}` }), el("code", { class: "args", title: args, text: args }), this.status, this.stopButton, this.closeButton),
      this.views,
      this.final,
    );
    this.viewSet = new ViewSet(this.views);
    this.stopButton.addEventListener("click", () => this.stop());
    this.closeButton.addEventListener("click", () => {
      if (this.ended) this.node.remove();
    });
    this.lastSeq = -1;
    this.gaps = 0;
    this.ended = false;
  }

  set state(value) {
    this.node.dataset.state = value;
    this.status.textContent = value;
    this.stopButton.disabled = ["done", "error", "cancelled", "cancelling"].includes(value);
  }

  async start() {
    this.state = "running";
    this.started = performance.now();
    try {
      this.call = await this.socket.call(this.request, {
        onChunk: (chunk) => this.chunk(chunk),
        onFinal: (chunk) => this.finish(chunk),
        onResult: (result, metadata) => this.result(result, metadata),
        onError: (error) => this.error(error),
        onCredit: (items, bytes) => this.input?.credit(items, bytes),
      });
      this.node.dataset.callId = this.call.id;
      if (this.input && !this.ended) {
        this.input.attach(this.call, this.node);
        this.node.dataset.input = "streaming";
      }
    } catch (err) {
      this.error({ code: "UNAVAILABLE", type: "", message: err.message });
    }
  }

  stop() {
    if (!this.call || this.ended) return;
    if (this.input && this.node.dataset.input === "streaming") {
      this.node.dataset.input = "ended";
      this.status.textContent = "finishing";
      this.stopButton.disabled = true;
      this.input.end();
      return;
    }
    this.state = "cancelling";
    this.call.cancel();
  }

  chunk(chunk) {
    if (chunk.seq > this.lastSeq + 1 && this.lastSeq >= 0) this.gaps += chunk.seq - this.lastSeq - 1;
    this.lastSeq = Math.max(this.lastSeq, chunk.seq);
    this.node.dataset.chunks = String(Number(this.node.dataset.chunks) + 1);
    this.node.dataset.lastSeq = String(chunk.seq);
    try {
      this.viewSet.feed(chunk);
    } catch (err) {
      console.error(`a view failed on chunk ${chunk.seq} of ${this.request.tool}`, err);
    }
  }

  end(state, ...content) {
    this.ended = true;
    if (this.input) {
      this.input.detach(); // the last run listening releases the microphone
      this.node.dataset.input = "ended";
    }
    this.state = state;
    this.node.dataset.elapsedMs = String(Math.round(performance.now() - this.started));
    this.final.replaceChildren(...content.filter(Boolean));
  }

  finish(chunk) {
    if (chunk.data !== null && chunk.data !== undefined) this.chunk(chunk);
    const dropped = Number(chunk.metadata?.dropped_chunks || 0);
    this.node.dataset.dropped = String(dropped);
    const note = dropped ? el("p", { class: "muted", text: `${dropped} chunks skipped to keep up (overflow=latest)` }) : null;
    this.end("done", el("h4", { text: `Finished: ${this.node.dataset.chunks} chunks` }), note, metadataTable(chunk.metadata));
  }

  result(result, metadata) {
    const text = describe(result);
    this.end("done", el("h4", { text: "Result" }), el("pre", { class: "result", "data-result": "", text }), metadataTable(metadata));
  }

  error(error) {
    const cancelled = error.code === "CANCELLED";
    if (error.code === "UNAUTHENTICATED") this.onAuthLost();
    const title = cancelled ? "Cancelled" : `${error.code}${error.type ? ` · ${error.type}` : ""}`;
    const details = error.details ? el("pre", { class: "details", text: JSON.stringify(error.details, null, 1) }) : null;
    const trace = error.traceback ? el("details", {}, el("summary", { text: "traceback" }), el("pre", { text: error.traceback })) : null;
    this.node.dataset.errorCode = error.code || "";
    this.node.dataset.errorType = error.type || "";
    this.end(cancelled ? "cancelled" : "error", el("h4", { class: cancelled ? "" : "bad", text: title }), el("p", { class: "error-message", text: error.message }), details, trace);
  }
}
