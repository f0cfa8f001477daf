// The instrument monitor's view (adapters/instrument): its snapshot as a table, then each delta applied to it with
// the changed cells highlighted.

import { el } from "./dom.js";
import { card, count, isNum, isRecord } from "./view-kit.js";

// -- instrument table: snapshot, then deltas with the changed cells highlighted (adapters/instrument) ----------
const INSTRUMENT_TYPES = new Set(["snapshot", "delta", "heartbeat", "end"]);
const COLUMNS = ["instrument", "parameter", "value", "unit", "error"];
const shown = (v) => (v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v));

export class TableView {
  static kind = "table";
  // a snapshot starts the table; so does a delta when the snapshot was skipped (overflow=latest): rows then
  // appear as their parameters change
  static fits = (chunk) =>
    isRecord(chunk.data) &&
    ((chunk.data.type === "snapshot" && Array.isArray(chunk.data.readings)) ||
      (chunk.data.type === "delta" && Array.isArray(chunk.data.changes)));
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
