// The page's one transport for tool calls: the worker's WebSocket /v1/ws (docs/http.md).
//
// Why a WebSocket rather than one EventSource per run: a dashboard runs several streams at once, and browsers
// allow only six HTTP/1.1 connections per origin; one socket carries every call, unary or streaming, and a
// cancel is one small frame naming the call (EventSource can only cancel by dropping its connection); NumPy
// arrays arrive as binary frames, read straight into typed arrays instead of base64 text; and the transport's
// own options (max_rate_hz, overflow) travel in the call frame, apart from the tool's arguments (the audio
// tools have an argument named max_rate_hz too).

import { sessionSecret } from "./api.js";

let nextId = 1;

// numpy dtype.str -> typed array; the worker sends little-endian data, as every browser's typed arrays are
const TYPED = {
  f4: Float32Array, f8: Float64Array, i1: Int8Array, u1: Uint8Array, b1: Uint8Array,
  i2: Int16Array, u2: Uint16Array, i4: Int32Array, u4: Uint32Array, i8: BigInt64Array, u8: BigUint64Array,
};

/** A NumPy chunk's bytes as {dtype, shape, values: TypedArray} (C order). */
export function decodeArray(header, bytes) {
  const order = header.dtype[0];
  const Typed = TYPED[header.dtype.slice(1)];
  if (!Typed || order === ">") throw new Error(`unsupported array dtype ${header.dtype}`);
  const copy = bytes.slice(0); // aligned copy: a typed array needs an offset that is a multiple of its size
  return { dtype: header.dtype, shape: header.shape, values: new Typed(copy) };
}

/** A unary result: an array result ({dtype, shape, base64}, content_type application/x-npy) as a typed array. */
function decodeResult(message) {
  const result = message.result;
  if (message.content_type !== "application/x-npy" || !result || typeof result.base64 !== "string") return result;
  const bytes = Uint8Array.from(atob(result.base64), (c) => c.charCodeAt(0));
  return decodeArray(result, bytes.buffer);
}

/** One binary frame: 4-byte big-endian header length N, N bytes of JSON header, the raw array bytes. */
export function decodeBinaryFrame(buffer) {
  const length = new DataView(buffer).getUint32(0, false);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, length)));
  header.chunk.data = decodeArray(header.chunk.data, buffer.slice(4 + length));
  return header;
}

/** A binary input frame, the layout of the worker's own: 4-byte big-endian header length, JSON header, raw
 * bytes (a typed array's, little-endian like every browser's). */
export function encodeInputFrame(header, values) {
  const head = new TextEncoder().encode(JSON.stringify(header));
  const frame = new Uint8Array(4 + head.length + values.byteLength);
  new DataView(frame.buffer).setUint32(0, head.length, false);
  frame.set(head, 4);
  frame.set(new Uint8Array(values.buffer, values.byteOffset, values.byteLength), 4 + head.length);
  return frame;
}

/**
 * Many calls over one WebSocket. `call()` returns {id, cancel(), sendArray(values), sendItems(items), endInput(error)}; the
 * handlers get onChunk(chunk), onFinal(chunk), onResult(result, metadata), onError(error) ({type, message,
 * code, ...}) and, for a call with `input: true`, onCredit(items, bytes).
 * Exactly one of onFinal / onResult / onError ends a call. A socket that closes ends its calls with an
 * UNAVAILABLE error; the next call opens a new socket.
 */
export class CallSocket {
  constructor(url) {
    this.url = url;
    this.socket = null;
    this.opening = null;
    this.calls = new Map();
    this.onstate = () => {};
  }

  async connect() {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) return this.socket;
    if (this.opening) return this.opening;
    this.opening = new Promise((resolve, reject) => {
      // a WebSocket cannot carry a header: the session's secret travels as a subprotocol the worker does not echo
      const secret = sessionSecret();
      const socket = new WebSocket(this.url, secret ? ["krait.v1", `krait.session.${secret}`] : ["krait.v1"]);
      socket.binaryType = "arraybuffer";
      socket.onopen = () => {
        this.socket = socket;
        this.opening = null;
        this.onstate("open");
        resolve(socket);
      };
      socket.onmessage = (event) => this.receive(event.data);
      socket.onclose = (event) => {
        this.opening = null;
        if (this.socket === socket) this.socket = null;
        this.onstate("closed");
        const reason = `the connection to the worker closed (code ${event.code}${event.reason ? `: ${event.reason}` : ""})`;
        for (const handlers of this.calls.values()) handlers.onError({ code: "UNAVAILABLE", type: "", message: reason });
        this.calls.clear();
        reject(new Error(reason));
      };
    });
    return this.opening;
  }

  async call(request, handlers) {
    const id = `c${nextId++}`;
    const frame = { op: "call", id, tool: request.tool, args: request.args || {} };
    for (const key of ["session", "timeout_ms", "max_rate_hz", "overflow"]) {
      if (request[key] !== undefined && request[key] !== null && request[key] !== "") frame[key] = request[key];
    }
    if (request.input) frame.input = true; // the page streams the tool's input: "credit" events say how much
    const socket = await this.connect();
    this.calls.set(id, handlers);
    socket.send(JSON.stringify(frame));
    const open = () => this.calls.has(id) && socket.readyState === WebSocket.OPEN;
    return {
      id,
      cancel: () => {
        if (open()) socket.send(JSON.stringify({ op: "cancel", id }));
      },
      /** One float32 array as one input item (a binary frame); false once the call is over. */
      sendArray: (values) => {
        if (!open()) return false;
        socket.send(encodeInputFrame({ op: "input", id, dtype: "<f4", shape: [values.length] }, values));
        return true;
      },
      /** JSON input items, in one text frame: the bytes it costs against the credit (its UTF-8 length), or false
       * once the call is over. */
      sendItems: (items) => {
        if (!open()) return false;
        const text = JSON.stringify({ op: "input", id, items });
        socket.send(text);
        return new TextEncoder().encode(text).length;
      },
      /** The end of the input (`error`: the page's input failed, the tool's iterator raises InputError). */
      endInput: (error) => {
        if (open()) socket.send(JSON.stringify(error ? { op: "input_end", id, error } : { op: "input_end", id }));
      },
    };
  }

  receive(data) {
    let message;
    try {
      message = typeof data === "string" ? JSON.parse(data) : decodeBinaryFrame(data);
    } catch (err) {
      console.error("unreadable frame from the worker", err);
      return;
    }
    const handlers = this.calls.get(message.id);
    if (!handlers) {
      if (message.event === "error") console.warn("worker error for no call", message.error);
      return;
    }
    switch (message.event) {
      case "chunk":
        handlers.onChunk(message.chunk);
        return;
      case "credit":
        handlers.onCredit?.(message.items, message.bytes);
        return;
      case "final":
        this.calls.delete(message.id);
        handlers.onFinal(message.chunk);
        return;
      case "result":
        this.calls.delete(message.id);
        handlers.onResult(decodeResult(message), message.metadata || {});
        return;
      case "error":
        this.calls.delete(message.id);
        handlers.onError(message.error || { code: "UNKNOWN", message: "error without details" });
        return;
      default:
        console.warn("unknown event from the worker", message);
    }
  }

  close() {
    if (this.socket) this.socket.close(1000, "logged out");
  }
}

export function socketUrl(path = "/v1/ws") {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;
}
