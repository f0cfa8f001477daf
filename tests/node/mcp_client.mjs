// An MCP client of a Krait worker with the official TypeScript SDK (@modelcontextprotocol/sdk), run by
// tests/test_mcp.py. Usage:
//   node mcp_client.mjs stdio '<command JSON: {"command", "args", "cwd", "env"}>'
//   node mcp_client.mjs http <url> <token>
//   node mcp_client.mjs http-wrong-token <url>
// It lists the tools, calls add, streams stream_progress with a progress token, calls a failing tool, and
// cancels an endless stream (AbortSignal: the SDK sends notifications/cancelled), then prints one JSON object.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [mode, target, token] = process.argv.slice(2);

function transportFor() {
  if (mode === "stdio") {
    const { command, args, cwd, env } = JSON.parse(target);
    return new StdioClientTransport({ command, args, cwd, env, stderr: "inherit" });
  }
  const headers = mode === "http" ? { Authorization: `Bearer ${token}` } : { Authorization: "Bearer wrong" };
  return new StreamableHTTPClientTransport(new URL(target), { requestInit: { headers } });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
  const client = new Client({ name: "krait-test", version: "1.0.0" });
  const out = {};
  try {
    await client.connect(transportFor());
  } catch (error) {
    out.connectError = String(error);
    out.code = error.code ?? null;
    return out;
  }
  out.protocolVersion = client.getServerVersion()?.name ?? null;
  out.tools = (await client.listTools()).tools;

  out.add = await client.callTool({ name: "add", arguments: { a: 1, b: 2 } });

  const progress = [];
  out.stream = await client.callTool({ name: "stream_progress", arguments: { steps: 4 } }, undefined, {
    onprogress: (p) => progress.push(p),
  });
  out.progress = progress;

  out.failing = await client.callTool({ name: "quota", arguments: { retry_after: 1.5 } });

  try {
    await client.callTool({ name: "add", arguments: { a: "x", b: 1 } });
    out.badArgs = null;
  } catch (error) {
    out.badArgs = { code: error.code, message: error.message };
  }

  // cancel an endless stream once its first chunk has come: the SDK sends notifications/cancelled
  const tag = `node-${process.pid}-${Date.now()}`;
  const controller = new AbortController();
  const ticks = [];
  const endless = client
    .callTool({ name: "endless_stream", arguments: { interval_ms: 20, tag } }, undefined, {
      signal: controller.signal,
      onprogress: (p) => {
        ticks.push(p);
        if (ticks.length === 2) controller.abort("enough");
      },
    })
    .then(
      () => "completed",
      (error) => `rejected: ${error}`,
    );
  out.cancelled = await endless;
  out.ticks = ticks.length;
  // the tool's finally runs on its own thread: ask the adapter what happened, for up to 5 s
  for (let i = 0; i < 100; i++) {
    const events = (await client.callTool({ name: "stream_events", arguments: { tag } })).structuredContent.result;
    out.events = events;
    if ("finally" in events) break;
    await sleep(50);
  }
  await client.close();
  return out;
}

main().then(
  (out) => {
    process.stdout.write(JSON.stringify(out));
    process.exit(0);
  },
  (error) => {
    process.stderr.write(`${error?.stack ?? error}\n`);
    process.exit(1);
  },
);
