// Live views chosen by what a stream carries. Every chunk is offered to each kind of view in turn; a view is
// created the first time a chunk fits it, and a chunk no view takes is shown as text. Each view exposes its
// state in data-* attributes (data-view, data-frames, data-points, ...) for tests and for scripts.

import { LineChart, SpectrumPlot } from "./charts.js";
import { el } from "./form.js";

const isNum = (v) => typeof v === "number" && Number.isFinite(v);
const numArray = (v) => (Array.isArray(v) && v.length > 0 && v.every((x) => x === null || isNum(x))) || ArrayBuffer.isView(v);
const isArrayChunk = (data) => data && typeof data === "object" && ArrayBuffer.isView(data.values) && Array.isArray(data.shape);
const isRecord = (data) => data && typeof data === "object" && !Array.isArray(data) && !isArrayChunk(data);

function card(kind, title) {
  const node = el("section", { class: `view view-${kind}`, "data-view": kind }, el("h4", { text: title }));
  return node;
}

function count(node, attr) {
  node.dataset[attr] = String(Number(node.dataset[attr] || 0) + 1);
}

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

// -- spectrum (JSON frequencies + levels, octave bands, or a NumPy (2..3, n) frame with bin_hz) ----------------
function spectrumOf(chunk) {
  const data = chunk.data;
  if (isArrayChunk(data)) {
    const [rows, n] = data.shape;
    if (data.shape.length !== 2 || rows < 2 || rows > 3 || chunk.metadata.bin_hz === undefined || chunk.metadata.rows !== undefined) return null;
    const row = (r) => data.values.subarray(r * n, (r + 1) * n);
    const traces = { magnitudes_db: row(1) };
    if (rows === 3) traces.peak_magnitudes_db = row(2);
    const peak = { hz: Number(chunk.metadata.peak_frequency_hz), db: Number(chunk.metadata.peak_db) };
    return { frequencies: row(0), traces, peak, bars: false };
  }
  if (!isRecord(data)) return null;
  const fkey = Object.keys(data).find((k) => /frequenc/.test(k) && numArray(data[k]) && data[k].length > 8);
  if (!fkey) return null;
  const n = data[fkey].length;
  const traces = {};
  for (const [k, v] of Object.entries(data)) if (k !== fkey && numArray(v) && v.length === n) traces[k] = v;
  if (!Object.keys(traces).length) return null;
  const peak = isNum(data.peak_frequency_hz) ? { hz: data.peak_frequency_hz, db: data.peak_db } : null;
  return { frequencies: data[fkey], traces, peak, bars: /band|centre|center/.test(fkey) };
}

class SpectrumView {
  static kind = "spectrum";
  static fits = (chunk) => spectrumOf(chunk) !== null;
  constructor(chunk) {
    this.node = card("spectrum", "Spectrum");
    this.canvas = el("canvas", { class: "plot" });
    this.node.append(this.canvas);
    this.plot = new SpectrumPlot(this.canvas, { bars: spectrumOf(chunk).bars });
  }
  take(chunk) {
    const s = spectrumOf(chunk);
    if (!s) return false;
    this.plot.show(s.frequencies, s.traces, s.peak);
    count(this.node, "frames");
    this.node.dataset.points = String(s.frequencies.length);
    if (s.peak && isNum(s.peak.hz)) this.node.dataset.peakHz = s.peak.hz.toFixed(2);
    return true;
  }
}

// -- spectrogram (NumPy (1 + rows, points): row 0 frequencies, then one dB row per frame) ----------------------
class SpectrogramView {
  static kind = "spectrogram";
  static fits = (chunk) => isArrayChunk(chunk.data) && chunk.data.shape.length === 2 && chunk.metadata.rows !== undefined;
  constructor() {
    this.node = card("spectrogram", "Spectrogram");
    this.canvas = el("canvas", { class: "plot heat", width: 600, height: 200 });
    this.node.append(this.canvas);
  }
  take(chunk) {
    if (!SpectrogramView.fits(chunk)) return false;
    const [rows, points] = chunk.data.shape;
    const ctx = this.canvas.getContext("2d");
    const { width, height } = this.canvas;
    for (let r = 1; r < rows; r++) {
      ctx.drawImage(this.canvas, -1, 0); // scroll left one column per frame
      const column = ctx.createImageData(1, height);
      for (let y = 0; y < height; y++) {
        const p = Math.min(points - 1, Math.floor(((height - 1 - y) / height) * points));
        const db = chunk.data.values[r * points + p];
        const t = Math.max(0, Math.min(1, (db + 100) / 100)); // -100 .. 0 dB
        column.data.set([255 * t, 255 * t * t * 0.8, 255 * (1 - t) * 0.6 + 40 * t, 255], y * 4);
      }
      ctx.putImageData(column, width - 1, 0);
      count(this.node, "rows");
    }
    count(this.node, "frames");
    return true;
  }
}

// -- level meter with peak hold (stream_levels) -----------------------------------------------------------------
const METER_FLOOR = -90;
const meterPercent = (db) => Math.max(0, Math.min(100, ((db - METER_FLOOR) / -METER_FLOOR) * 100));

class MeterView {
  static kind = "meter";
  static fits = (chunk) => isRecord(chunk.data) && numArray(chunk.data.rms_dbfs) && numArray(chunk.data.peak_hold_dbfs);
  constructor() {
    this.node = card("meter", "Level");
    this.channels = [];
  }
  channel(i) {
    while (this.channels.length <= i) {
      const level = el("div", { class: "meter-level" });
      const peak = el("div", { class: "meter-peak" });
      const hold = el("div", { class: "meter-hold" });
      const text = el("span", { class: "meter-text" });
      const row = el("div", { class: "meter", "data-channel": this.channels.length }, el("div", { class: "meter-track" }, peak, level, hold), text);
      this.node.append(row);
      this.channels.push({ row, level, peak, hold, text });
    }
    return this.channels[i];
  }
  take(chunk) {
    const d = chunk.data;
    if (!MeterView.fits(chunk)) return false;
    d.rms_dbfs.forEach((rms, i) => {
      const c = this.channel(i);
      const peak = d.peak_dbfs ? d.peak_dbfs[i] : rms;
      const hold = d.peak_hold_dbfs[i];
      c.level.style.width = `${meterPercent(rms)}%`;
      c.peak.style.width = `${meterPercent(peak)}%`;
      c.hold.style.left = `${meterPercent(hold)}%`;
      c.text.textContent = `${rms.toFixed(1)} dBFS · hold ${hold.toFixed(1)}`;
      c.row.dataset.level = rms.toFixed(2);
      c.row.dataset.peakHold = hold.toFixed(2);
    });
    this.node.dataset.level = d.rms_dbfs[0].toFixed(2);
    this.node.dataset.peakHold = d.peak_hold_dbfs[0].toFixed(2);
    count(this.node, "frames");
    return true;
  }
}

// -- pitch: note and cents (stream_pitch) -----------------------------------------------------------------------
class PitchView {
  static kind = "pitch";
  static fits = (chunk) => isRecord(chunk.data) && "note" in chunk.data && "cents" in chunk.data;
  constructor() {
    this.node = card("pitch", "Pitch");
    this.note = el("div", { class: "pitch-note", text: "–" });
    this.needle = el("div", { class: "cents-needle" });
    this.detail = el("div", { class: "pitch-detail" });
    this.node.append(this.note, el("div", { class: "cents-scale" }, el("span", { text: "-50" }), this.needle, el("span", { text: "+50" })), this.detail);
  }
  take(chunk) {
    const d = chunk.data;
    if (!PitchView.fits(chunk)) return false;
    const voiced = d.note !== null && isNum(d.cents);
    this.note.textContent = voiced ? d.note : "–";
    this.node.classList.toggle("unvoiced", !voiced);
    this.needle.style.left = `${voiced ? 50 + d.cents : 50}%`;
    const hz = isNum(d.frequency_hz) ? `${d.frequency_hz.toFixed(2)} Hz` : "unvoiced";
    const cents = voiced ? ` · ${d.cents >= 0 ? "+" : ""}${d.cents.toFixed(1)} cents` : "";
    const conf = isNum(d.confidence) ? ` · confidence ${d.confidence.toFixed(2)}` : "";
    this.detail.textContent = `${hz}${cents}${conf}`;
    this.node.dataset.note = voiced ? d.note : "";
    this.node.dataset.cents = voiced ? d.cents.toFixed(1) : "";
    count(this.node, "frames");
    return true;
  }
}

// -- instrument table: snapshot, then deltas with the changed cells highlighted (adapters/instrument) ----------
const INSTRUMENT_TYPES = new Set(["snapshot", "delta", "heartbeat", "end"]);
const COLUMNS = ["instrument", "parameter", "value", "unit", "error"];
const shown = (v) => (v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v));

class TableView {
  static kind = "table";
  static fits = (chunk) => isRecord(chunk.data) && chunk.data.type === "snapshot" && Array.isArray(chunk.data.readings);
  constructor() {
    this.node = card("table", "Readings");
    this.rows = new Map();
    this.body = el("tbody");
    this.status = el("p", { class: "muted table-status" });
    this.node.append(
      el("table", { class: "readings" }, el("thead", {}, el("tr", {}, ...COLUMNS.map((c) => el("th", { text: c })), el("th", { text: "updated" }))), this.body),
      this.status,
    );
    this.node.dataset.changedCells = "0";
  }
  row(reading) {
    let row = this.rows.get(reading.full_name);
    if (!row) {
      const cells = Object.fromEntries([...COLUMNS, "ts"].map((c) => [c, el("td", { "data-column": c })]));
      const tr = el("tr", { "data-row": reading.full_name }, ...Object.values(cells));
      this.body.append(tr);
      row = { tr, cells };
      this.rows.set(reading.full_name, row);
    }
    return row;
  }
  fill(reading, changed = []) {
    const { cells } = this.row(reading);
    for (const column of COLUMNS) cells[column].textContent = shown(reading[column]);
    cells.ts.textContent = isNum(reading.ts) ? new Date(reading.ts * 1000).toLocaleTimeString() : "";
    for (const column of changed) {
      const cell = cells[column];
      if (!cell) continue;
      cell.classList.remove("changed");
      void cell.offsetWidth; // restart the highlight animation
      cell.classList.add("changed");
      count(cell, "changes");
      count(this.node, "changedCells");
    }
  }
  take(chunk) {
    const d = chunk.data;
    if (!isRecord(d) || !INSTRUMENT_TYPES.has(d.type)) return false;
    // update_index has no gaps at the source: a gap here is deltas skipped by overflow=latest (stale cells)
    if (isNum(d.update_index) && this.lastUpdate !== undefined && d.update_index > this.lastUpdate + 1) {
      this.missed = (this.missed || 0) + d.update_index - this.lastUpdate - 1;
      this.node.dataset.missedUpdates = String(this.missed);
    }
    if (isNum(d.update_index)) this.lastUpdate = d.update_index;
    if (d.type === "snapshot") d.readings.forEach((r) => this.fill(r));
    if (d.type === "delta") {
      (d.changes || []).forEach((c) => this.fill(c.reading, c.changed_fields || []));
      (d.added || []).forEach((r) => this.fill(r, COLUMNS));
      for (const name of d.removed || []) this.rows.get(name)?.tr.classList.add("removed");
    }
    if (d.type === "end") this.status.textContent = `ended: ${d.reason} after ${d.polls} polls, ${d.updates} updates`;
    else if (d.type === "heartbeat") this.status.textContent = `alive: ${d.polls} polls`;
    else this.status.textContent = `update ${d.update_index} (poll ${d.poll_index})`;
    if (this.missed) this.status.textContent += ` · ${this.missed} updates skipped to keep up: some cells may be stale (deliver every chunk to see all)`;
    this.node.dataset.rows = String(this.rows.size);
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
