// The official MCP TypeScript SDK client (@modelcontextprotocol/sdk, pinned by
// typescript-client/package-lock.json: `Client` over `StreamableHTTPClientTransport`) on keygate's
// aggregated route, for aggregated_pipeline.sh (which names the upstreams), with static user
// tokens (TOKEN_AGG for MCP_URL, TOKEN_LF / TOKEN_CRLF / TOKEN_DOWN for the pass-through URLs
// MCP_URL/split-lf, /split-crlf, /down). This script starts the pipeline upstream
// (pipeline_upstream.mjs on PIPE_PORT) itself, and restarts it.
//
// 1. the HTTP+SSE upstream's tools are listed and `everything-sse_echo` answers;
// 2. a call the client aborts (the SDK sends `notifications/cancelled`) is seen cancelled within
//    a second by the 2025 upstream (sent the notification) and the 2026-07-28 one (its request
//    dropped);
// 3. `notifications/tools/list_changed` (after `pipeline_add-tool`) and
//    `notifications/resources/updated` (after subscribing and `pipeline_touch`) reach the
//    client's handlers, and the new tool is then listed;
// 4. `completion/complete` of the prompt `pipeline_team` routes to its upstream;
// 5. after the pipeline upstream restarts, the session's next request fails with HTTP 404 and
//    keygate's -32001, and a new client initializes and calls it again; after that client's
//    DELETE (200), its session id is refused: the SDK reconnecting with it gets 404, a raw POST
//    404 + -32001 with the request's id;
// 6. answers the split upstreams sent in pieces cut inside `é` (LF and CRLF) arrive intact
//    through the aggregated route and the pass-through route (serverInfo, tools/list, tools/call);
// 7. errors the gateway makes carry the request's id: an unknown tool's -32602 reaches the SDK
//    as that call's McpError (the SDK matches answers by id), the `down` integration's failure
//    reaches it as that call's HTTP 502, and raw POSTs with string and number ids get those ids
//    back (aggregated: unknown tool, upstream down; pass-through: upstream down).
//
// Usage: TOKEN_AGG=... TOKEN_LF=... TOKEN_CRLF=... TOKEN_DOWN=... PIPE_PORT=...
//        node aggregated_pipeline.mjs MCP_URL PIPELINE_UPSTREAM_JS

import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { openSync } from "node:fs";
import { connect } from "node:net";
import { homedir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const STEP_TIMEOUT_MS = 15_000;
const TOTAL_TIMEOUT_MS = 55_000;
const WORDS = "café crème"; // what the split upstreams send cut inside its é
const NOTE = "pipeline://note";
const SESSION_EXPIRED = -32001; // keygate: initialize again
const UNAVAILABLE = -32002; // keygate: the integration's server is unavailable
const INVALID_PARAMS = -32602;

const PREFIX = process.env.KEYGATE_E2E_TS || join(homedir(), ".cache/keygate-e2e/ts");
const sdk = (path) => import(pathToFileURL(join(PREFIX, "node_modules/@modelcontextprotocol/sdk/dist/esm", path)).href);
const { Client } = await sdk("client/index.js");
const { StreamableHTTPClientTransport, StreamableHTTPError } = await sdk("client/streamableHttp.js");
const { McpError, ToolListChangedNotificationSchema, ResourceUpdatedNotificationSchema } = await sdk("types.js");

const PASSED = [];
const TRACE = [];

class Failure extends Error {}
function check(cond, what) {
  if (!cond) throw new Failure(what);
}
const log = (line) => PASSED.push(line);
const show = (v) => JSON.stringify(v)?.slice(0, 400);
const texts = (r) => (r.content ?? []).filter((c) => c.type === "text").map((c) => c.text).join("\n");
const sleep = (ms) => new Promise((res) => setTimeout(res, ms));
const opts = { timeout: STEP_TIMEOUT_MS };

async function step(what, fn) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Failure(`${what}: no answer within ${STEP_TIMEOUT_MS / 1000}s`)), STEP_TIMEOUT_MS);
  });
  try {
    return await Promise.race([fn(), deadline]);
  } catch (e) {
    if (e instanceof Failure) throw e;
    throw new Failure(`${what}: ${e?.stack ?? e}`);
  } finally {
    clearTimeout(timer);
  }
}

/** `fn` must reject (within the step timeout); returns what it rejected with, unwrapped. */
async function rejection(what, fn) {
  let result;
  try {
    result = await step(what, () => fn().catch((e) => Promise.reject(Object.assign(new Failure(what), { rejected: e }))));
  } catch (e) {
    if (e.rejected !== undefined) return e.rejected;
    throw e;
  }
  throw new Failure(`${what} answered ${show(result)}, expected an error`);
}

async function waitFor(what, cond, ms) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Failure(`${what} within ${ms / 1000}s`);
    await sleep(50);
  }
}

/** pipeline_upstream.mjs on a fixed port, restartable. */
class Upstream {
  constructor(script, port, logPath) {
    Object.assign(this, { script, port, logPath });
  }

  async start() {
    const out = openSync(this.logPath, "a");
    this.proc = spawn("node", [this.script, String(this.port)], { stdio: ["ignore", out, out] });
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      const up = await new Promise((res) => {
        const s = connect(this.port, "127.0.0.1", () => res(true) || s.end());
        s.on("error", () => res(false));
      });
      if (up) return;
      await sleep(100);
    }
    throw new Failure(`pipeline_upstream.mjs did not listen on port ${this.port}`);
  }

  async stop() {
    if (!this.proc || this.proc.exitCode !== null) return;
    const exited = new Promise((res) => this.proc.once("exit", res));
    this.proc.kill("SIGTERM");
    await exited;
  }
}

async function tracedFetch(url, init) {
  TRACE.push(`-> ${init?.method ?? "GET"} ${url} ${typeof init?.body === "string" ? init.body.slice(0, 200) : ""}`);
  const response = await fetch(url, init);
  TRACE.push(`<- ${response.status} ${init?.method ?? "GET"} ${url}`);
  return response;
}

/** A connected client and what reached it besides answers. */
async function connectClient(url, token, sessionId) {
  const heard = { methods: [], updated: [], errors: [] };
  const client = new Client({ name: "keygate-e2e-aggregated-pipeline", version: "1" }, { capabilities: {} });
  client.onerror = (e) => heard.errors.push(String(e));
  client.setNotificationHandler(ToolListChangedNotificationSchema, (n) => void heard.methods.push(n.method));
  client.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => {
    heard.methods.push(n.method);
    heard.updated.push(n.params.uri);
  });
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { Authorization: `Bearer ${token}` } },
    fetch: tracedFetch,
    sessionId,
  });
  await step(`connect ${url}`, () => client.connect(transport, opts));
  return { client, transport, heard };
}

async function legacySseUpstream(client, names) {
  check(names.has("everything-sse_echo") && names.has("everything-sse_get-sum"),
    `tools/list lacks everything-sse's tools: ${show([...names])}`);
  const r = await step("everything-sse_echo", () =>
    client.callTool({ name: "everything-sse_echo", arguments: { message: "via HTTP+SSE" } }, undefined, opts));
  check(!r.isError && texts(r) === "Echo: via HTTP+SSE", `everything-sse_echo: ${show(r)}`);
  log("1. HTTP+SSE upstream: everything-sse_* listed, everything-sse_echo answered");
}

async function cancellation(client, slug, era) {
  const tag = randomUUID().slice(0, 12);
  const abort = new AbortController();
  const call = client.callTool({ name: `${slug}_wait`, arguments: { tag, seconds: 10 } }, undefined,
    { ...opts, signal: abort.signal });
  await sleep(500);
  abort.abort("the test cancels it");
  const cancelledAt = Date.now();
  await call.then(() => { throw new Failure(`${slug}_wait answered although aborted`); }, () => {});
  let seen = "";
  while (Date.now() - cancelledAt < 1000) {
    seen = texts(await step(`${slug}_cancelled`, () => client.callTool({ name: `${slug}_cancelled`, arguments: {} }, undefined, opts)));
    if (seen.split(",").includes(tag)) break;
  }
  check(seen.split(",").includes(tag), `the aborted ${slug}_wait ${tag} was not seen cancelled upstream within 1 s: ${show(seen)}`);
  log(`2. cancellation: the ${era} upstream ${slug} saw the call cancelled within ${((Date.now() - cancelledAt) / 1000).toFixed(2)}s`);
}

async function notifications(client, heard) {
  // The upstream sends list changes on its GET stream, which the gateway opens when the
  // client's GET arrives; a change made before that is lost, so try until one is heard.
  const changes = () => heard.methods.filter((m) => m === "notifications/tools/list_changed").length;
  let added;
  for (let attempt = 0; attempt < 10; attempt++) {
    const before = changes();
    added = `t${attempt}${randomUUID().slice(0, 6)}`;
    await step("pipeline_add-tool", () => client.callTool({ name: "pipeline_add-tool", arguments: { name: added } }, undefined, opts));
    try {
      await waitFor("no list change", () => changes() > before, 1000);
      break;
    } catch (e) {
      if (!(e instanceof Failure)) throw e;
    }
  }
  check(changes() > 0, `no notifications/tools/list_changed reached the client: ${show(heard.methods)}`);
  const names = new Set((await step("tools/list", () => client.listTools({}, opts))).tools.map((t) => t.name));
  check(names.has(`pipeline_extra-${added}`), `tools/list after list_changed lacks pipeline_extra-${added}`);
  await step("resources/subscribe", () => client.subscribeResource({ uri: NOTE }, opts));
  const r = await step("pipeline_touch", () => client.callTool({ name: "pipeline_touch", arguments: {} }, undefined, opts));
  check(texts(r) === "updated", `pipeline_touch: the upstream holds no subscription: ${show(r)}`);
  await waitFor(`no notifications/resources/updated for ${NOTE}`, () => heard.updated.includes(NOTE), 5000);
  await step("resources/unsubscribe", () => client.unsubscribeResource({ uri: NOTE }, opts));
  log(`3. notifications/tools/list_changed (then pipeline_extra-${added} listed) and notifications/resources/updated ${NOTE} reached the client`);
}

async function completion(client) {
  const r = await step("completion/complete", () => client.complete({
    ref: { type: "ref/prompt", name: "pipeline_team" }, argument: { name: "department", value: "Eng" },
  }, opts));
  check(show(r.completion.values) === show(["Engineering"]), `completion of pipeline_team: ${show(r)}`);
  log("4. completion/complete ref/prompt pipeline_team department=Eng -> Engineering");
}

async function splitAnswers(client, route, slugs, prefix) {
  const tools = (await step("tools/list", () => client.listTools({}, opts))).tools;
  for (const slug of slugs) {
    const name = `${prefix(slug)}echo`;
    const description = tools.find((t) => t.name === name)?.description;
    check(description === `Echoes, ${WORDS} included`, `${route} ${slug}: tools/list description ${show(description)}`);
    const r = await step(name, () => client.callTool({ name, arguments: { message: "ok" } }, undefined, opts));
    check(!r.isError && texts(r) === `${WORDS}: ok`, `${route} ${slug}: tools/call answered ${show(texts(r))}`);
  }
  log(`6. ${route}: SSE answers of ${slugs.join(", ")} cut inside 'é' arrived intact: ${show(WORDS)}`);
}

async function sdkErrors(client) {
  let e = await rejection("nosuch_echo", () => client.callTool({ name: "nosuch_echo", arguments: {} }, undefined, opts));
  check(e instanceof McpError && e.code === INVALID_PARAMS, `nosuch_echo: ${e}, expected McpError ${INVALID_PARAMS}`);
  e = await rejection("down_echo", () => client.callTool({ name: "down_echo", arguments: {} }, undefined, opts));
  check(e instanceof StreamableHTTPError && e.code === 502 && e.message.includes(String(UNAVAILABLE)),
    `down_echo: ${e}, expected HTTP 502 with ${UNAVAILABLE}`);
  log(`7. the SDK got nosuch_echo's McpError ${INVALID_PARAMS} and down_echo's HTTP 502 (${UNAVAILABLE}) as the calls' errors`);
}

/** A raw JSON-RPC POST; the status and the JSON body. */
async function post(url, token, body, sessionId) {
  const headers = {
    Authorization: `Bearer ${token}`, "Content-Type": "application/json", Accept: "application/json, text/event-stream",
    "MCP-Protocol-Version": "2025-06-18",
  };
  if (sessionId) headers["Mcp-Session-Id"] = sessionId;
  const r = await fetch(url, { method: "POST", headers, body: JSON.stringify(body) });
  const text = await r.text();
  let json = {};
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON: the checks below name the text
  }
  return { status: r.status, json, text, sessionId: r.headers.get("mcp-session-id") };
}

function expectErrorId(what, answer, id, code) {
  check(answer.json.id === id && answer.json.error?.code === code,
    `${what} with id ${show(id)}: ${answer.status} ${answer.text.slice(0, 300)}, expected error ${code} with that id`);
}

async function rawErrorIds(url, env) {
  const init = { jsonrpc: "2.0", id: "init-ts", method: "initialize",
    params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "raw", version: "1" } } };
  const opened = await post(url, env.TOKEN_AGG, init);
  check(opened.status === 200 && opened.sessionId, `raw initialize: ${opened.status} ${opened.text.slice(0, 300)}`);
  await post(url, env.TOKEN_AGG, { jsonrpc: "2.0", method: "notifications/initialized" }, opened.sessionId);
  for (const [tool, id, code] of [["nosuch_echo", "ts-Δ-1", INVALID_PARAMS], ["nosuch_echo", 31, INVALID_PARAMS],
    ["down_echo", "ts-2", UNAVAILABLE], ["down_echo", 0, UNAVAILABLE]]) {
    const a = await post(url, env.TOKEN_AGG, { jsonrpc: "2.0", id, method: "tools/call", params: { name: tool, arguments: {} } }, opened.sessionId);
    expectErrorId(`tools/call ${tool}`, a, id, code);
  }
  expectErrorId("pass-through initialize to the down upstream", await post(`${url}/down`, env.TOKEN_DOWN, { ...init, id: 5 }), 5, UNAVAILABLE);
  log("7. raw POSTs: -32602 (unknown tool) and -32002 (upstream down, aggregated and pass-through) carry the request's id");
}

async function restartAndDelete(url, env, upstream) {
  let { client } = await connectClient(url, env.TOKEN_AGG);
  let r = await step("pipeline_cancelled", () => client.callTool({ name: "pipeline_cancelled", arguments: {} }, undefined, opts));
  check(!r.isError, `pipeline_cancelled before the restart: ${show(r)}`);
  await upstream.stop();
  await upstream.start();
  const e = await rejection("tools/list after the upstream restarted", () => client.listTools({}, opts));
  check(e instanceof StreamableHTTPError && e.code === 404 && e.message.includes(String(SESSION_EXPIRED)),
    `tools/list after the upstream restarted: ${e}, expected HTTP 404 with ${SESSION_EXPIRED}`);
  await client.close();
  let transport;
  ({ client, transport } = await connectClient(url, env.TOKEN_AGG));
  r = await step("pipeline_cancelled (new session)", () => client.callTool({ name: "pipeline_cancelled", arguments: {} }, undefined, opts));
  check(!r.isError, `pipeline_cancelled in a new session: ${show(r)}`);
  log(`5. after the upstream restarted: HTTP 404 + ${SESSION_EXPIRED}; a new initialize works`);

  const closed = transport.sessionId;
  await step("DELETE", () => transport.terminateSession());
  await client.close();
  const reconnected = await connectClient(url, env.TOKEN_AGG, closed); // the SDK skips initialize
  const gone = await rejection("tools/list in the deleted session", () => reconnected.client.listTools({}, opts));
  check(gone instanceof StreamableHTTPError && gone.code === 404, `tools/list in the deleted session: ${gone}, expected HTTP 404`);
  await reconnected.client.close();
  const raw = await post(url, env.TOKEN_AGG, { jsonrpc: "2.0", id: "after-delete", method: "tools/list" }, closed);
  check(raw.status === 404, `a raw POST in the deleted session answered ${raw.status}`);
  expectErrorId("a raw POST in the deleted session", raw, "after-delete", SESSION_EXPIRED);
  log(`5. after DELETE (200): the SDK reconnecting with that session gets HTTP 404; a raw POST 404 + ${SESSION_EXPIRED} with its id`);
}

async function run(url, script, env) {
  const upstream = new Upstream(script, Number(env.PIPE_PORT), env.KEYGATE_E2E_UPSTREAM_LOG || "/dev/null");
  await upstream.start();
  try {
    const { client, heard } = await connectClient(url, env.TOKEN_AGG);
    check(client.getServerVersion()?.name === "keygate", `serverInfo ${show(client.getServerVersion())}`);
    const names = new Set((await step("tools/list", () => client.listTools({}, opts))).tools.map((t) => t.name));
    await legacySseUpstream(client, names);
    await cancellation(client, "pipeline", "2025");
    await cancellation(client, "modern", "2026-07-28");
    await notifications(client, heard);
    await completion(client);
    await splitAnswers(client, "aggregated", ["split-lf", "split-crlf"], (slug) => `${slug}_`);
    check(heard.errors.length === 0, `the client reported errors: ${show(heard.errors)}`);
    await sdkErrors(client); // (the SDK also reports the 502 to onerror)
    await client.close();
    for (const [slug, token] of [["split-lf", env.TOKEN_LF], ["split-crlf", env.TOKEN_CRLF]]) {
      const pass = await connectClient(`${url}/${slug}`, token);
      check(pass.client.getServerVersion()?.name === `split ${WORDS}`, `pass-through ${slug}: serverInfo ${show(pass.client.getServerVersion())}`);
      await splitAnswers(pass.client, "pass-through", [slug], () => "");
      await pass.client.close();
    }
    await rawErrorIds(url, env);
    await restartAndDelete(url, env, upstream);
  } finally {
    await upstream.stop();
  }
}

const [url, script] = process.argv.slice(2);
const env = process.env;
if (!url || !script || !env.TOKEN_AGG || !env.TOKEN_LF || !env.TOKEN_CRLF || !env.TOKEN_DOWN || !env.PIPE_PORT) {
  console.error("usage: TOKEN_AGG=... TOKEN_LF=... TOKEN_CRLF=... TOKEN_DOWN=... PIPE_PORT=... node aggregated_pipeline.mjs MCP_URL PIPELINE_UPSTREAM_JS");
  process.exit(2);
}
const fail = (why) => {
  console.error(`FAIL [typescript]: ${why}`);
  console.error(`passed before that:\n  ${PASSED.join("\n  ") || "(nothing)"}`);
  console.error(`transport requests:\n${TRACE.slice(-30).join("\n")}`);
  process.exit(1);
};
const overall = setTimeout(() => fail(`timed out after ${TOTAL_TIMEOUT_MS / 1000}s`), TOTAL_TIMEOUT_MS);
try {
  await run(url, script, env);
} catch (e) {
  fail(e instanceof Failure ? e.message : e?.stack ?? e);
}
clearTimeout(overall);
console.log(PASSED.map((l) => `[typescript] ${l}`).join("\n"));
process.exit(0);
