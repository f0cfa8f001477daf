// Views of the audio adapter's streams (docs/adapters/audio.md): a spectrum (or octave bands), a scrolling
// spectrogram, a level meter with peak hold and a tuner (note and cents).

import { SpectrumPlot } from "./charts.js";
import { el } from "./dom.js";
import { card, count, isArrayChunk, isNum, isRecord, numArray } from "./view-kit.js";

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

export class SpectrumView {
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
export class SpectrogramView {
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

export class MeterView {
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
export class PitchView {
  static kind = "pitch";
  static fits = (chunk) => isRecord(chunk.data) && "note" in chunk.data && "cents" in chunk.data;
  constructor() {
    this.node = card("pitch", "Pitch");
    this.note = el("div", { class: "pitch-note", text: "–" });
    this.needle = el("div", { class: "cents-needle" });
    this.detail = el("div", { class: "pitch-detail" });
    this.last = el("div", { class: "pitch-detail muted", "data-last": "" });
    this.node.append(this.note, el("div", { class: "cents-scale" }, el("span", { text: "-50" }), this.needle, el("span", { text: "+50" })), this.detail, this.last);
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
    if (voiced) {
      // a tuner holds the last note it heard (a beep, a plucked string): shown below, and in data-last-*
      this.last.textContent = `last: ${d.note} ${d.frequency_hz.toFixed(2)} Hz`;
      this.node.dataset.lastNote = d.note;
      this.node.dataset.lastHz = d.frequency_hz.toFixed(3);
      count(this.node, "voiced");
    }
    count(this.node, "frames");
    return true;
  }
}
