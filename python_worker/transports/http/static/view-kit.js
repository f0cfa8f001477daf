// What the views share: recognising values, a view's card, counting into data-* attributes.

import { el } from "./dom.js";

export const isNum = (v) => typeof v === "number" && Number.isFinite(v);
export const numArray = (v) => (Array.isArray(v) && v.length > 0 && v.every((x) => x === null || isNum(x))) || ArrayBuffer.isView(v);
export const isArrayChunk = (data) => data && typeof data === "object" && ArrayBuffer.isView(data.values) && Array.isArray(data.shape);
export const isRecord = (data) => data && typeof data === "object" && !Array.isArray(data) && !isArrayChunk(data);

export function card(kind, title) {
  const node = el("section", { class: `view view-${kind}`, "data-view": kind }, el("h4", { text: title }));
  return node;
}

export function count(node, attr) {
  node.dataset[attr] = String(Number(node.dataset[attr] || 0) + 1);
}
