// A Krait client in Node.js built from proto/ alone: @grpc/grpc-js makes the calls, @grpc/proto-loader reads the
// service from proto/krait/v1/worker.proto, protobufjs decodes the error details (the google.rpc.Status in the
// grpc-status-details-bin trailer, holding a krait.v1.ToolError) with proto/google/rpc/status.proto.
//
//   node client.js HOST:PORT stream|cancel|error|bigint
//
// Prints one JSON document; tests/test_node_client.py runs it against a real worker.
"use strict";

const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const PROTO = path.resolve(__dirname, "../../proto");

// keepCase: the proto's own field names; longs: String, so 64-bit fields (seq, pid, uptime_ms) stay exact
const definition = protoLoader.loadSync("krait/v1/worker.proto", {
  includeDirs: [PROTO],
  keepCase: true,
  longs: String,
  defaults: true,
});
const { ToolWorker } = grpc.loadPackageDefinition(definition).krait.v1;

const types = protobuf.loadSync([
  path.join(PROTO, "google/rpc/status.proto"),
  path.join(PROTO, "krait/v1/worker.proto"),
]);
const Status = types.lookupType("google.rpc.Status");
const ToolError = types.lookupType("krait.v1.ToolError");

/** The krait.v1.ToolError of a failed call, or null. */
function toolError(error) {
  const [raw] = error.metadata ? error.metadata.get("grpc-status-details-bin") : [];
  if (!raw) return null;
  const detail = Status.decode(raw).details.find((d) => d.type_url === "type.googleapis.com/krait.v1.ToolError");
  if (!detail) return null;
  // protobufjs names fields in camelCase: toolName, workerId, detailsJson
  const e = ToolError.toObject(ToolError.decode(detail.value), { defaults: true });
  return { ...e, details: e.detailsJson ? JSON.parse(e.detailsJson) : {} };
}

/** A payload by its content type (JSON, text; anything else stays a Buffer). */
function decode(data, contentType) {
  if (contentType === "application/json") return JSON.parse(data.toString("utf8"));
  if (contentType.startsWith("text/")) return data.toString("utf8");
  return contentType ? data : null;
}

function request(tool, args) {
  return { tool_name: tool, args_json: JSON.stringify(args) };
}

/** The worker's token as call metadata (from KRAIT_TOKEN, as a deployment passes it; none: no metadata). */
function auth() {
  const metadata = new grpc.Metadata();
  if (process.env.KRAIT_TOKEN) metadata.add("authorization", `Bearer ${process.env.KRAIT_TOKEN}`);
  return metadata;
}

function deadline(seconds) {
  return new Date(Date.now() + seconds * 1000);
}

function execute(client, tool, args) {
  return new Promise((resolve, reject) => {
    client.ExecuteTool(request(tool, args), auth(), { deadline: deadline(10) }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

/** Collects a stream's chunks; `stopAfter` chunks in, it cancels the call instead. */
function stream(client, tool, args, stopAfter = Infinity) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    const call = client.ExecuteStreamingTool(request(tool, args), auth(), { deadline: deadline(10) });
    call.on("data", (c) => {
      chunks.push({ seq: c.seq, data: decode(c.data, c.content_type), is_final: c.is_final, metadata: c.metadata });
      if (chunks.length === stopAfter) call.cancel();
    });
    call.on("end", () => resolve({ chunks }));
    call.on("error", (error) =>
      error.code === grpc.status.CANCELLED ? resolve({ chunks, cancelled: true }) : reject(error),
    );
  });
}

async function main() {
  const [target, mode] = process.argv.slice(2);
  const client = new ToolWorker(target, grpc.credentials.createInsecure());
  let out;
  if (mode === "stream") {
    out = await stream(client, "stream_progress", { steps: 3 });
  } else if (mode === "cancel") {
    const tag = `node-${process.pid}`;
    out = await stream(client, "endless_stream", { tag, interval_ms: 1000 }, 1);
    // the tool's finally block ran on the worker: ask it what happened to the stream
    for (let i = 0; i < 500 && !(out.events && out.events.finally); i++) {
      const response = await execute(client, "stream_events", { tag });
      out.events = decode(response.data, response.content_type);
      if (!out.events.finally) await new Promise((r) => setTimeout(r, 20));
    }
  } else if (mode === "error") {
    try {
      await execute(client, "quota", { retry_after: 2.5 });
      out = { error: null };
    } catch (error) {
      out = { code: error.code, message: error.details, error: toolError(error) };
    }
  } else if (mode === "bigint") {
    // JSON numbers beyond 2^53 lose digits in JSON.parse: write them as text, read them with BigInt
    const big = 2n ** 64n + 1n;
    const response = await new Promise((resolve, reject) =>
      client.ExecuteTool({ tool_name: "echo", args_json: `{"value": ${big}}` }, auth(), { deadline: deadline(10) }, (e, r) =>
        e ? reject(e) : resolve(r),
      ),
    );
    const text = response.data.toString("utf8");
    out = { lossy: JSON.parse(text), exact: BigInt(text).toString() };
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
  client.close();
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
