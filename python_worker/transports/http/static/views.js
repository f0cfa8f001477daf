// Live views chosen by what a stream carries. Every chunk is offered to each kind of view in turn; a view is
// created the first time a chunk fits it, and a chunk no view takes is shown as text. Each view exposes its
// state in data-* attributes (data-view, data-frames, data-points, ...) for tests and for scripts.
// The generic views are here (progress, line charts, text); audio-views.js and table-view.js hold the others.

import { MeterView, PitchView, SpectrogramView, SpectrumView } from "./audio-views.js";
import { LineChart } from "./charts.js";
import { el } from "./dom.js";
import { TableView } from "./table-view.js";
import { card, count, isArrayChunk, isNum, isRecord, numArray } from "./view-kit.js";

// -- progress ---------------------------------------------------------------------------------------------------
/** Percent done from the usual shapes: step/total, epoch/epochs, progress/total (ToolContext.report_progress),
 * or a bare `progress` (percent, or a fraction when <= 1). */
export function progressOf(data) {
  if (!isRecord(data)) return null;
  if (isNum(data.step) && isNum(data.total) && data.total > 0) return (100 * data.step) / data.total;
  if (isNum(data.epoch) && isNum(data.epochs) && data.epochs > 0) return (100 * data.epoch) / data.epochs;
  if (!isNum(data.progress)) return null;
  if (isNum(data.total) && data.total > 0) return (100 * data.progress) / data.total;
  return data.progress <= 1 ? 100 * data.progress : data.progress;
}

class ProgressView {
  static kind = "progress";
  static fits = (chunk) => progressOf(chunk.data) !== null;
  constructor() {
    this.bar = el("div", { class: "bar-fill" });
    this.text = el("span", { class: "bar-text" });
    this.node = card("progress", "Progress");
    this.node.append(el("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100 }, this.bar, this.text));
  }
  take(chunk) {
    const percent = progressOf(chunk.data);
    if (percent === null) return false;
    const clamped = Math.max(0, Math.min(100, percent));
    this.bar.style.width = `${clamped}%`;
    this.node.querySelector(".bar").setAttribute("aria-valuenow", clamped.toFixed(1));
    this.node.dataset.value = clamped.toFixed(1);
    const d = chunk.data;
    const detail = isNum(d.step) ? ` · step ${d.step}/${d.total}` : isNum(d.epoch) ? ` · epoch ${d.epoch}/${d.epochs}` : "";
    this.text.textContent = `${clamped.toFixed(0)}%${detail}${d.message ? ` · ${d.message}` : ""}`;
    count(this.node, "updates");
    return true;
  }
}

// -- line charts over time for numeric fields -------------------------------------------------------------------
// counters, sizes and clocks: the x axis or bookkeeping, not something to plot
const BOOKKEEPING = new Set([
  "seq", "index", "step", "total", "epoch", "epochs", "steps", "seconds", "t_s", "ts", "tick", "progress",
  "update_index", "poll_index", "overflows", "fft_size", "bin_hz", "rows", "first_row_t_s", "hop_s", "midi",
  "cents", "response_time_s", "peak_decay_db_s", "bands_per_octave", "train_samples", "val_samples", "parameters",
]);
const X_KEYS = ["t_s", "epoch", "step", "tick", "index"];

/** {group: {series: value}} of a chunk's plottable numbers: scalars, and short per-channel arrays. */
function numericFields(data) {
  const groups = {};
  const put = (key, name, v) => {
    const base = key.replace(/^val_/, "");
    const group = /_dbfs$/.test(base) ? "dBFS" : /_db$/.test(base) ? "dB" : /_hz$/.test(base) ? "Hz" : base;
    (groups[group] ||= {})[name] = v;
  };
  for (const [key, v] of Object.entries(data)) {
    if (BOOKKEEPING.has(key)) continue;
    if (isNum(v)) put(key, key, v);
    else if (numArray(v) && v.length <= 8) v.forEach((x, i) => isNum(x) && put(key, v.length > 1 ? `${key}[${i}]` : key, x));
  }
  return groups;
}

class ChartsView {
  static kind = "charts";
  static fits = (chunk) => isRecord(chunk.data) && Object.keys(numericFields(chunk.data)).length > 0;
  constructor(chunk) {
    this.node = el("div", { class: "view-charts", "data-view": "charts" });
    this.xKey = X_KEYS.find((k) => isNum(chunk.data[k])) || "seq";
    this.charts = new Map();
  }
  take(chunk) {
    const d = chunk.data;
    if (!isRecord(d)) return false;
    const x = this.xKey === "seq" ? chunk.seq : d[this.xKey];
    if (!isNum(x)) return false; // e.g. a training run's final summary: no epoch, not a point in time
    let took = false;
    for (const [group, series] of Object.entries(numericFields(d))) {
      let chart = this.charts.get(group);
      if (!chart) {
        const canvas = el("canvas", { class: "plot" });
        const node = el("section", { class: "view view-chart", "data-chart": group, "data-points": "0" }, el("h4", { text: group }), canvas);
        this.node.append(node);
        chart = { node, plot: new LineChart(canvas, { xLabel: this.xKey }) };
        this.charts.set(group, chart);
      }
      for (const [name, y] of Object.entries(series)) took = chart.plot.add(name, x, y) || took;
      chart.node.dataset.points = String(chart.plot.received);
      chart.node.dataset.series = String(chart.plot.series.size);
    }
    return took;
  }
}

// -- text: text/* chunks as lines, anything else as its latest JSON ---------------------------------------------
/** Text for any value: a string as is, an array's dtype, shape and range, anything else as JSON. */
export function describe(data) {
  if (isArrayChunk(data)) {
    let [lo, hi] = [Infinity, -Infinity];
    for (const v of data.values) { const n = Number(v); if (n < lo) lo = n; if (n > hi) hi = n; }
    return `array ${data.dtype} shape (${data.shape.join(", ")})${data.values.length ? `, min ${lo}, max ${hi}` : ""}`;
  }
  return typeof data === "string" ? data : JSON.stringify(data, null, 1);
}

class TextView {
  static kind = "text";
  static fits = () => true;
  constructor() {
    this.node = card("text", "Output");
    this.pre = el("pre", { class: "text-out" });
    this.node.append(this.pre);
    this.lines = [];
  }
  take(chunk) {
    const text = describe(chunk.data);
    if (typeof chunk.data === "string") {
      this.lines.push(text);
      if (this.lines.length > 500) this.lines.shift();
      this.pre.textContent = this.lines.join("\n");
    } else {
      this.pre.textContent = text.length > 4000 ? `${text.slice(0, 4000)}…` : text;
    }
    count(this.node, "lines");
    return true;
  }
}

const KINDS = [TableView, ProgressView, SpectrumView, SpectrogramView, MeterView, PitchView, ChartsView];

/** The views of one run, in `container`; feed() every chunk with data. */
export class ViewSet {
  constructor(container) {
    this.container = container;
    this.views = new Map();
  }

  feed(chunk) {
    if (chunk.data === null || chunk.data === undefined) return;
    let taken = false;
    for (const Kind of KINDS) {
      let view = this.views.get(Kind.kind);
      if (!view && Kind.fits(chunk)) view = this.add(Kind, chunk);
      if (view && view.take(chunk)) taken = true;
      if (taken && Kind === TableView) return; // instrument updates: the table shows them whole
    }
    if (!taken) (this.views.get("text") || this.add(TextView, chunk)).take(chunk);
  }

  add(Kind, chunk) {
    const view = new Kind(chunk);
    this.views.set(Kind.kind, view);
    this.container.append(view.node);
    return view;
  }
}
