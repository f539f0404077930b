// A small 2025-era MCP server on the official TypeScript SDK (@modelcontextprotocol/sdk, the
// server half of the package typescript-client/package-lock.json pins: `McpServer` over
// `StreamableHTTPServerTransport`, one per session), for aggregated_pipeline.sh. What it offers
// is what the aggregated endpoint must carry between a client and a 2025 upstream:
//
// - tool `wait` (sleeps; a cancelled wait — the request's signal aborted by the SDK on
//   `notifications/cancelled` — is listed by the tool `cancelled`);
// - tool `add-tool` (registers a tool `extra-{name}` in the caller's session, so the SDK sends
//   `notifications/tools/list_changed` on that session's GET stream);
// - resource `pipeline://note` with `resources/subscribe`, and tool `touch`, which sends
//   `notifications/resources/updated` for it to the session when subscribed (on the GET stream);
// - prompt `team` whose argument `department` completes (`completion/complete`).
//
// Usage: node pipeline_upstream.mjs PORT  (serves Streamable HTTP at /mcp)

import { randomUUID } from "node:crypto";
import { createServer } from "node:http";
import { homedir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const PREFIX = process.env.KEYGATE_E2E_TS || join(homedir(), ".cache/keygate-e2e/ts");
const lib = (path) => import(pathToFileURL(join(PREFIX, "node_modules", path)).href);
const { McpServer } = await lib("@modelcontextprotocol/sdk/dist/esm/server/mcp.js");
const { StreamableHTTPServerTransport } = await lib("@modelcontextprotocol/sdk/dist/esm/server/streamableHttp.js");
const { completable } = await lib("@modelcontextprotocol/sdk/dist/esm/server/completable.js");
const { SubscribeRequestSchema, UnsubscribeRequestSchema, isInitializeRequest } = await lib(
  "@modelcontextprotocol/sdk/dist/esm/types.js",
);
const { z } = await lib("zod/index.js");

const NOTE = "pipeline://note";
const DEPARTMENTS = ["Engineering", "Marketing", "Sales"];
const CANCELLED = []; // the tags of cancelled waits, across sessions

/** One session's server: its own tools (add-tool changes them) and subscriptions. */
function sessionServer() {
  const server = new McpServer(
    { name: "pipeline-upstream", version: "1" },
    { capabilities: { resources: { subscribe: true, listChanged: true }, tools: { listChanged: true } } },
  );
  const subscribed = new Set();

  server.registerTool("wait", {
    description: "Waits `seconds`; a cancelled wait is listed by `cancelled`.",
    inputSchema: { tag: z.string(), seconds: z.number() },
  }, async ({ tag, seconds }, extra) => {
    const finished = await new Promise((resolve) => {
      const timer = setTimeout(() => resolve(true), seconds * 1000);
      extra.signal.addEventListener("abort", () => {
        clearTimeout(timer);
        resolve(false);
      });
    });
    if (!finished) CANCELLED.push(tag);
    return { content: [{ type: "text", text: finished ? "waited" : "cancelled" }] };
  });

  server.registerTool("cancelled", { description: "The tags of the waits cancelled so far." },
    async () => ({ content: [{ type: "text", text: CANCELLED.join(",") }] }));

  server.registerTool("add-tool", {
    description: "Registers the tool extra-{name} in this session (tools/list_changed follows).",
    inputSchema: { name: z.string() },
  }, async ({ name }) => {
    server.registerTool(`extra-${name}`, { description: `added at run time (${name})` },
      async () => ({ content: [{ type: "text", text: `extra ${name}` }] }));
    return { content: [{ type: "text", text: `added extra-${name}` }] };
  });

  server.registerTool("touch", { description: `Sends resources/updated for ${NOTE} if subscribed.` }, async () => {
    const sent = subscribed.has(NOTE);
    if (sent) await server.server.sendResourceUpdated({ uri: NOTE });
    return { content: [{ type: "text", text: sent ? "updated" : "not subscribed" }] };
  });

  server.registerResource("note", NOTE, { mimeType: "text/plain" }, async () => ({
    contents: [{ uri: NOTE, mimeType: "text/plain", text: "a note from the pipeline upstream" }],
  }));
  server.server.setRequestHandler(SubscribeRequestSchema, async (request) => {
    subscribed.add(request.params.uri);
    return {};
  });
  server.server.setRequestHandler(UnsubscribeRequestSchema, async (request) => {
    subscribed.delete(request.params.uri);
    return {};
  });

  server.registerPrompt("team", {
    description: "A prompt for a department.",
    argsSchema: { department: completable(z.string(), (value) => DEPARTMENTS.filter((d) => d.startsWith(value))) },
  }, ({ department }) => ({ messages: [{ role: "user", content: { type: "text", text: `Team ${department}` } }] }));
  return server;
}

const transports = new Map(); // Mcp-Session-Id -> transport

async function readJson(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const text = Buffer.concat(chunks).toString("utf8");
  return text ? JSON.parse(text) : undefined;
}

const http = createServer(async (req, res) => {
  try {
    if (!req.url.startsWith("/mcp")) {
      res.writeHead(404).end();
      return;
    }
    const sid = req.headers["mcp-session-id"];
    const body = req.method === "POST" ? await readJson(req) : undefined;
    let transport = sid ? transports.get(sid) : undefined;
    if (!transport && !sid && req.method === "POST" && isInitializeRequest(body)) {
      transport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        onsessioninitialized: (id) => transports.set(id, transport),
      });
      transport.onclose = () => transport.sessionId && transports.delete(transport.sessionId);
      await sessionServer().connect(transport);
    }
    if (!transport) {
      const error = sid ? [404, "Session not found"] : [400, "Bad Request: No valid session ID provided"];
      res.writeHead(error[0], { "Content-Type": "application/json" })
        .end(JSON.stringify({ jsonrpc: "2.0", id: body?.id ?? null, error: { code: -32000, message: error[1] } }));
      return;
    }
    await transport.handleRequest(req, res, body);
  } catch (e) {
    console.error(e);
    if (!res.headersSent) res.writeHead(500).end();
  }
});
http.listen(Number(process.argv[2]), "127.0.0.1");
