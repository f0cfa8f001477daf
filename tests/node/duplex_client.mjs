// ExecuteToolDuplex from Node.js, built from proto/ alone (@grpc/grpc-js, @grpc/proto-loader): the caller's
// first message is `start`, then it sends input items only within the credit the worker grants, answers the
// tool's handler calls, and reads the tool's chunks or result. Run by tests/test_node_duplex.py:
//
//   node duplex_client.mjs HOST:PORT sum|echo|handler
//
// sum: 3000 small items into sum_input (more than one window: the worker must grant credit again);
// echo: items into echo_input, their chunks back; handler: ask_stream calls the handler `square` per chunk.
// Prints one JSON document.
import path from "node:path";
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const PROTO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../proto");

// keepCase: the proto's field names; longs: String (uint64 credit, ids stay exact); oneofs: `kind` names the set
// member of DuplexRequest / DuplexResponse
const definition = protoLoader.loadSync("krait/v1/worker.proto", {
  includeDirs: [PROTO],
  keepCase: true,
  longs: String,
  defaults: true,
  oneofs: true,
});
const { ToolWorker } = grpc.loadPackageDefinition(definition).krait.v1;

function auth() {
  const metadata = new grpc.Metadata();
  if (process.env.KRAIT_TOKEN) metadata.add("authorization", `Bearer ${process.env.KRAIT_TOKEN}`);
  return metadata;
}

const json = (value) => Buffer.from(JSON.stringify(value), "utf8");
const decode = (data, contentType) =>
  contentType === "application/json" || (contentType === "" && data.length) ? JSON.parse(data.toString("utf8")) : null;

/**
 * One duplex call: sends `items` (JSON values) within the worker's credit, answers handler calls with
 * `handlers[name](args)`, and resolves with what came back.
 */
function duplex(client, tool, args, items, handlers = {}) {
  return new Promise((resolve, reject) => {
    const call = client.ExecuteToolDuplex(auth(), { deadline: new Date(Date.now() + 30000) });
    const out = { credits: [], chunks: [], result: null, handlerCalls: 0, sent: 0 };
    let items_ = 0;
    let bytes_ = 0;
    let next = 0;
    let ended = false;

    // send what the credit allows; the input's end once everything is sent
    function pump() {
      const batch = [];
      while (next < items.length && items_ > 0 && bytes_ > 0) {
        const data = json(items[next++]);
        items_ -= 1;
        bytes_ -= data.length;
        batch.push({ data, content_type: "application/json" });
      }
      if (batch.length) {
        out.sent += batch.length;
        call.write({ input: { items: batch } });
      }
      if (next === items.length && !ended) {
        ended = true;
        call.write({ input_end: { code: 0, message: "" } });
      }
    }

    call.on("data", (message) => {
      if (message.kind === "credit") {
        out.credits.push([Number(message.credit.items), Number(message.credit.bytes)]);
        items_ += Number(message.credit.items);
        bytes_ += Number(message.credit.bytes);
        pump();
      } else if (message.kind === "handler_call") {
        const { id, name, args_json } = message.handler_call;
        out.handlerCalls += 1;
        const handler = handlers[name];
        const reply = handler
          ? { id, data: json(handler(JSON.parse(args_json || "null"))), content_type: "" }
          : { id, error: { type: "HandlerNotFound", message: `no handler ${name}` } };
        call.write({ handler_reply: reply });
      } else if (message.kind === "chunks") {
        for (const c of message.chunks.chunks) out.chunks.push(decode(c.data, c.content_type));
      } else if (message.kind === "result") {
        out.result = decode(message.result.data, message.result.content_type);
      }
    });
    call.on("end", () => resolve(out));
    call.on("error", reject);
    call.write({ start: { tool_name: tool, args_json: JSON.stringify(args) } });
    if (!items.length) pump(); // nothing to send: the input ends at once (a tool without input gets no credit)
  });
}

async function main() {
  const [target, mode] = process.argv.slice(2);
  const client = new ToolWorker(target, grpc.credentials.createInsecure());
  let out;
  if (mode === "sum") {
    const items = Array.from({ length: 3000 }, (_, i) => ({ i }));
    out = await duplex(client, "sum_input", {}, items);
  } else if (mode === "echo") {
    out = await duplex(client, "echo_input", {}, ["a", { b: 1 }, [2, 3]]);
  } else if (mode === "handler") {
    out = await duplex(client, "ask_stream", { name: "square", count: 3 }, [], { square: (a) => a.i * a.i });
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
  client.close();
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error} ${error.details || ""}\n`);
  process.exit(1);
});
