// Plain canvas charts: a line chart over time and a spectrum plot (log frequency axis, lines or bars).
// Data is stored as it arrives; drawing happens at most once per animation frame for every chart that
// changed, so a fast stream costs one redraw per frame, not one per chunk.

const COLORS = ["#4e9af1", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#edc948", "#76b7b2", "#ff9da7", "#9c755f"];
const dirty = new Set();
let scheduled = false;

function schedule(chart) {
  dirty.add(chart);
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => {
    scheduled = false;
    const charts = [...dirty];
    dirty.clear();
    for (const c of charts) c.draw();
  });
}

/** Round tick values covering [lo, hi]. */
function ticks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const step = 10 ** Math.floor(Math.log10(raw));
  const nice = [1, 2, 5, 10].map((m) => m * step).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / nice) * nice; v <= hi + nice * 1e-9; v += nice) out.push(Math.abs(v) < nice * 1e-9 ? 0 : v);
  return out;
}

/** A tick label: as many decimals as the tick step needs (440.01 vs 440.02), SI prefixes for big values. */
function label(v, step = 0) {
  const a = Math.abs(v);
  if (step > 0 && step < 1 && a < 1e4) return v.toFixed(Math.min(12, Math.ceil(-Math.log10(step) - 1e-9)));
  if (a >= 1e9) return `${+(v / 1e9).toPrecision(3)}G`;
  if (a >= 1e6) return `${+(v / 1e6).toPrecision(3)}M`;
  if (a >= 1e4) return `${+(v / 1e3).toPrecision(3)}k`;
  if (a === 0 || a >= 0.01) return `${+v.toPrecision(4)}`;
  return v.toExponential(1);
}

/** A canvas sized to its CSS box at the device's pixel ratio; returns the 2D context and the CSS size. */
function prepare(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 400;
  const height = canvas.clientHeight || 180;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  return { ctx, width, height };
}

const PAD = { left: 52, right: 10, top: 20, bottom: 22 };

function axes(ctx, box, xTicks, yTicks, xPos, yPos, xFormat = label) {
  const yStep = yTicks.length > 1 ? yTicks[1] - yTicks[0] : 0;
  const xStep = xTicks.length > 1 ? xTicks[1] - xTicks[0] : 0;
  ctx.strokeStyle = "rgba(128,128,128,0.25)";
  ctx.fillStyle = "#8a93a3";
  ctx.font = "11px system-ui, sans-serif";
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (const t of yTicks) {
    const y = Math.round(yPos(t)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(box.left, y);
    ctx.lineTo(box.right, y);
    ctx.stroke();
    ctx.fillText(label(t, yStep), box.left - 6, y);
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (const t of xTicks) {
    const x = Math.round(xPos(t)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(x, box.top);
    ctx.lineTo(x, box.bottom);
    ctx.stroke();
    ctx.fillText(xFormat(t, xStep), x, box.bottom + 4);
  }
}

function legend(ctx, names, left) {
  ctx.font = "11px system-ui, sans-serif";
  ctx.textAlign = "left";
  ctx.textBaseline = "top";
  let x = left;
  names.forEach((name, i) => {
    ctx.fillStyle = COLORS[i % COLORS.length];
    ctx.fillRect(x, 5, 10, 10);
    ctx.fillStyle = "#c9d1dc";
    ctx.fillText(name, x + 14, 4);
    x += ctx.measureText(name).width + 28;
  });
}

/** Several named series of (x, y) points; keeps the latest `capacity` points of each. */
export class LineChart {
  constructor(canvas, { xLabel = "", capacity = 4000 } = {}) {
    this.canvas = canvas;
    this.xLabel = xLabel;
    this.capacity = capacity;
    this.series = new Map();
    this.received = 0;
  }

  add(name, x, y) {
    if (!Number.isFinite(x) || !Number.isFinite(y)) return false;
    let s = this.series.get(name);
    if (!s) {
      s = { xs: [], ys: [] };
      this.series.set(name, s);
    }
    s.xs.push(x);
    s.ys.push(y);
    if (s.xs.length > this.capacity) {
      s.xs.splice(0, s.xs.length - this.capacity);
      s.ys.splice(0, s.ys.length - this.capacity);
    }
    this.received++;
    schedule(this);
    return true;
  }

  draw() {
    const { ctx, width, height } = prepare(this.canvas);
    let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity];
    for (const s of this.series.values()) {
      for (let i = 0; i < s.xs.length; i++) {
        x0 = Math.min(x0, s.xs[i]); x1 = Math.max(x1, s.xs[i]);
        y0 = Math.min(y0, s.ys[i]); y1 = Math.max(y1, s.ys[i]);
      }
    }
    if (x0 === Infinity) return;
    if (x1 === x0) x1 = x0 + 1;
    if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
    const margin = (y1 - y0) * 0.05;
    y0 -= margin; y1 += margin;
    const box = { left: PAD.left, right: width - PAD.right, top: PAD.top, bottom: height - PAD.bottom };
    const xPos = (x) => box.left + ((x - x0) / (x1 - x0)) * (box.right - box.left);
    const yPos = (y) => box.bottom - ((y - y0) / (y1 - y0)) * (box.bottom - box.top);
    axes(ctx, box, ticks(x0, x1, Math.max(2, Math.floor(width / 90))), ticks(y0, y1, 4), xPos, yPos);
    let i = 0;
    for (const s of this.series.values()) {
      ctx.strokeStyle = COLORS[i++ % COLORS.length];
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      for (let k = 0; k < s.xs.length; k++) {
        const px = xPos(s.xs[k]);
        const py = yPos(s.ys[k]);
        if (k === 0) ctx.moveTo(px, py);
        else ctx.lineTo(px, py);
      }
      if (s.xs.length === 1) ctx.arc(xPos(s.xs[0]), yPos(s.ys[0]), 2, 0, 2 * Math.PI);
      ctx.stroke();
    }
    legend(ctx, [...this.series.keys()], box.left);
    if (this.xLabel) {
      ctx.fillStyle = "#8a93a3";
      ctx.textAlign = "right";
      ctx.fillText(this.xLabel, box.right, 4);
    }
  }
}

/** A frequency-domain frame: levels (dB) over a log frequency axis, as a line or as bars (octave bands). */
export class SpectrumPlot {
  constructor(canvas, { bars = false, floor = -120 } = {}) {
    this.canvas = canvas;
    this.bars = bars;
    this.floor = floor;
    this.frame = null;
    this.range = null; // y range that only widens, so the picture does not jump every frame
  }

  /** frequencies: Hz; traces: {name: [dB per frequency]}; peak: {hz, db} or null */
  show(frequencies, traces, peak = null) {
    this.frame = { frequencies, traces, peak };
    schedule(this);
  }

  draw() {
    if (!this.frame) return;
    const { ctx, width, height } = prepare(this.canvas);
    const { frequencies, traces, peak } = this.frame;
    const n = frequencies.length;
    if (!n) return;
    const positive = Array.from(frequencies).filter((f) => f > 0);
    const f0 = Math.min(...positive) || 1;
    const f1 = Math.max(...positive) || f0 * 10;
    let [lo, hi] = [Infinity, -Infinity];
    for (const values of Object.values(traces)) {
      for (const v of values) if (Number.isFinite(v) && v > this.floor) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    }
    if (lo === Infinity) { lo = this.floor; hi = 0; }
    lo = Math.floor((lo - 5) / 10) * 10;
    hi = Math.ceil((hi + 5) / 10) * 10;
    this.range = this.range ? [Math.min(this.range[0], lo), Math.max(this.range[1], hi)] : [lo, hi];
    const [y0, y1] = this.range;
    const box = { left: PAD.left, right: width - PAD.right, top: PAD.top, bottom: height - PAD.bottom };
    const lf0 = Math.log10(f0);
    const lf1 = Math.log10(f1 === f0 ? f0 * 10 : f1);
    const xPos = (f) => box.left + ((Math.log10(Math.max(f, f0)) - lf0) / (lf1 - lf0)) * (box.right - box.left);
    const yPos = (y) => box.bottom - ((Math.max(y, y0) - y0) / (y1 - y0)) * (box.bottom - box.top);
    const decades = [];
    for (let e = Math.floor(lf0); e <= Math.ceil(lf1); e++) for (const m of [1, 2, 5]) {
      const f = m * 10 ** e;
      if (f >= f0 && f <= f1) decades.push(f);
    }
    axes(ctx, box, decades, ticks(y0, y1, 5), xPos, yPos, (f) => (f >= 1000 ? `${f / 1000}k` : `${f}`));
    Object.entries(traces).forEach(([name, values], i) => {
      ctx.strokeStyle = ctx.fillStyle = COLORS[i % COLORS.length];
      if (this.bars && i === 0) {
        const w = Math.max(2, ((box.right - box.left) / n) * 0.7);
        for (let k = 0; k < n; k++) {
          const x = xPos(frequencies[k]);
          ctx.fillRect(x - w / 2, yPos(values[k]), w, box.bottom - yPos(values[k]));
        }
        return;
      }
      ctx.lineWidth = i === 0 ? 1.5 : 1;
      ctx.beginPath();
      for (let k = 0; k < n; k++) {
        const x = xPos(frequencies[k]);
        const y = yPos(values[k]);
        if (k === 0) ctx.moveTo(x, y);
        else ctx.lineTo(x, y);
      }
      ctx.stroke();
    });
    legend(ctx, Object.keys(traces), box.left);
    if (peak && Number.isFinite(peak.hz) && Number.isFinite(peak.db)) {
      const x = xPos(peak.hz);
      const y = yPos(peak.db);
      ctx.fillStyle = "#e15759";
      ctx.beginPath();
      ctx.arc(x, y, 3.5, 0, 2 * Math.PI);
      ctx.fill();
      ctx.textAlign = x > box.right - 120 ? "right" : "left";
      ctx.textBaseline = "bottom";
      ctx.fillText(`${peak.hz.toFixed(1)} Hz, ${peak.db.toFixed(1)} dB`, x + (ctx.textAlign === "left" ? 6 : -6), y - 4);
    }
  }
}
