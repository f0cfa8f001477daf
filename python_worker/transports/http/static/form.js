// A form per tool, generated from its parameters' JSON Schema (pydantic's, as the worker lists it).
//
// Handled: numbers, integers, strings, booleans, enums (any JSON type), arrays of numbers/integers/strings,
// nested objects ($ref to $defs, e.g. the audio tools' `signal`), optional values (anyOf [..., null]),
// defaults and required. Anything else is a JSON text field. read() returns the arguments or throws a
// FormError naming the field; an empty optional field is left out, so the tool's own default applies.

import { el } from "./dom.js";

export class FormError extends Error {
  constructor(path, message) {
    super(`${path}: ${message}`);
    this.path = path;
  }
}

let uid = 0;


function resolve(schema, root) {
  let current = schema;
  for (let depth = 0; current && current.$ref && depth < 16; depth++) {
    const match = /^#\/\$defs\/(.+)$/.exec(current.$ref);
    const target = match && root.$defs ? root.$defs[match[1]] : null;
    if (!target) return {};
    const { $ref, ...rest } = current;
    current = { ...target, ...rest };
  }
  return current || {};
}

/** The schema without its null branch, and whether null is allowed. */
function unwrapNullable(schema, root) {
  schema = resolve(schema, root);
  const branches = schema.anyOf || schema.oneOf;
  if (!branches) return { schema, nullable: schema.type === "null" };
  const others = branches.filter((b) => resolve(b, root).type !== "null");
  const nullable = others.length < branches.length;
  if (others.length === 1) {
    const { anyOf, oneOf, ...rest } = schema;
    return { schema: { ...resolve(others[0], root), ...rest }, nullable };
  }
  return { schema, nullable };
}

function kindOf(schema) {
  if (schema["x-krait-binary"]) return "binary";
  if (Array.isArray(schema.enum)) return "enum";
  if (schema.const !== undefined) return "enum";
  const type = schema.type;
  if (type === "boolean" || type === "integer" || type === "number" || type === "string") return type;
  if (type === "array") {
    const items = schema.items || {};
    if (["number", "integer", "string"].includes(items.type) && !items.enum) return "array";
    return "json";
  }
  if (type === "object" && schema.properties) return "object";
  return "json";
}

// the property's own title (pydantic's "Max Rate Hz"), else its name: not a referenced model's ("SignalSpec")
const title = (name, schema) => schema.title || name.replaceAll("_", " ");

function help(schema) {
  return schema.description ? el("small", { class: "help", text: schema.description }) : null;
}

function parseNumber(text, integer, path) {
  const value = Number(text);
  if (text.trim() === "" || !Number.isFinite(value)) throw new FormError(path, `"${text}" is not a number`);
  if (integer && !Number.isInteger(value)) throw new FormError(path, `"${text}" is not an integer`);
  return value;
}

function parseList(text, itemType, path) {
  const trimmed = text.trim();
  let items;
  if (trimmed.startsWith("[")) {
    try {
      items = JSON.parse(trimmed);
    } catch (err) {
      throw new FormError(path, `not a JSON list (${err.message})`);
    }
    if (!Array.isArray(items)) throw new FormError(path, "not a list");
  } else {
    items = trimmed.split(/[\s,;]+/).filter(Boolean);
  }
  return items.map((item, i) =>
    itemType === "string" ? String(item) : parseNumber(String(item), itemType === "integer", `${path}[${i}]`),
  );
}

/** One field: {node, read() -> value | undefined (left out)}. */
function field(name, schema, root, required, path) {
  const { schema: inner, nullable } = unwrapNullable(schema, root);
  const kind = kindOf(inner);
  const id = `f${++uid}`;
  const def = schema.default !== undefined ? schema.default : inner.default;
  const label = el("label", { for: id }, title(name, schema), required ? el("span", { class: "req", text: " *" }) : null);
  const wrap = (control, extra = null) =>
    el("div", { class: `field field-${kind}`, "data-field": path }, label, control, extra, help(schema));
  const attrs = { id, name: path, "data-param": path, required: required && !nullable };

  if (kind === "object") {
    const sub = form(inner, root, `${path}.`);
    const box = el("fieldset", { class: "nested", "data-param": path }, el("legend", { text: title(name, schema) }), help(schema), sub.node);
    if (!nullable && required) return { node: box, read: sub.read };
    // optional object: off means "left out" (the tool's default, e.g. the audio tools' 440 Hz sine)
    const toggle = el("input", { type: "checkbox", id, "data-param-enable": path, checked: def !== null && def !== undefined });
    const sync = () => box.classList.toggle("disabled", !toggle.checked);
    toggle.addEventListener("change", sync);
    sync();
    const node = el("div", { class: "field field-object", "data-field": path },
      el("label", { class: "inline" }, toggle, ` set ${title(name, schema)}`), box);
    return { node, read: () => (toggle.checked ? sub.read() : undefined) };
  }

  if (kind === "boolean" && !nullable) {
    const input = el("input", { ...attrs, type: "checkbox", checked: def === true });
    return { node: wrap(input), read: () => input.checked };
  }

  if (kind === "enum" || kind === "boolean") {
    const values = kind === "boolean" ? [true, false] : inner.enum || [inner.const];
    const select = el("select", attrs);
    const options = [...values];
    if (nullable) options.push(null);
    if (!required && def === undefined) select.append(el("option", { value: "", text: "" }));
    for (const value of options) {
      select.append(el("option", { value: JSON.stringify(value), text: value === null ? "null" : String(value) }));
    }
    if (def !== undefined) select.value = JSON.stringify(def);
    return {
      node: wrap(select),
      read: () => {
        if (select.value === "") {
          if (required) throw new FormError(path, "is required");
          return undefined;
        }
        return JSON.parse(select.value);
      },
    };
  }

  let input;
  let parse;
  const show = (value) => (value === undefined || value === null ? "" : value);
  if (kind === "integer" || kind === "number") {
    input = el("input", { ...attrs, type: "number", step: kind === "integer" ? "1" : "any", value: show(def),
      min: inner.minimum ?? inner.exclusiveMinimum, max: inner.maximum ?? inner.exclusiveMaximum });
    parse = (text) => parseNumber(text, kind === "integer", path);
  } else if (kind === "string") {
    input = el("input", { ...attrs, type: "text", value: show(def) });
    parse = (text) => text;
  } else if (kind === "array") {
    input = el("input", { ...attrs, type: "text", value: Array.isArray(def) ? def.join(", ") : "",
      placeholder: inner.items.type === "string" ? "a, b, c or a JSON list" : "1, 2.5, 3" });
    parse = (text) => parseList(text, inner.items.type, path);
  } else if (kind === "binary") {
    // the HTTP API takes JSON arguments only: NumPy arrays and bytes travel over gRPC, the link or Elixir
    input = el("input", { ...attrs, type: "text", disabled: true, placeholder: "binary: not sent over HTTP" });
    parse = () => {
      throw new FormError(path, "a binary argument (NumPy array or bytes) cannot be sent from the page: use a client library");
    };
  } else {
    input = el("textarea", { ...attrs, rows: 2, placeholder: "JSON" });
    input.value = def === undefined || def === null ? "" : JSON.stringify(def);
    parse = (text) => {
      try {
        return JSON.parse(text);
      } catch {
        // a union such as int | str (the audio tools' `device`): a plain word is a string
        if (/^[^\[{"]/.test(text.trim())) return text.trim();
        throw new FormError(path, "is not valid JSON");
      }
    };
  }
  return {
    node: wrap(input),
    read: () => {
      const text = input.value;
      if (kind === "binary" && !required) return undefined;
      if (kind === "binary") return parse(text);
      if (text.trim() === "" && kind !== "string") {
        if (required && !nullable) throw new FormError(path, "is required");
        return required ? null : undefined;
      }
      if (kind === "string" && text === "" && !required && (def === undefined || def === null)) return undefined;
      return parse(text);
    },
  };
}

function form(schema, root, prefix = "") {
  const required = new Set(schema.required || []);
  const fields = Object.entries(schema.properties || {}).map(([name, sub]) => [
    name,
    field(name, sub, root, required.has(name), `${prefix}${name}`),
  ]);
  const node = el("div", { class: "fields" }, ...fields.map(([, f]) => f.node));
  const read = () => {
    const args = {};
    for (const [name, f] of fields) {
      const value = f.read();
      if (value !== undefined) args[name] = value;
    }
    return args;
  };
  return { node, read };
}

/** The form of one tool: {node, read() -> arguments}; throws FormError on bad input. */
export function schemaForm(parameters) {
  const schema = parameters || { type: "object", properties: {} };
  const built = form(resolve(schema, schema), schema);
  if (!Object.keys(schema.properties || {}).length) built.node.append(el("p", { class: "muted", text: "No arguments." }));
  return built;
}

