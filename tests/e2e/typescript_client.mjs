// The official MCP TypeScript SDK client (@modelcontextprotocol/sdk, pinned by
// typescript-client/package-lock.json, installed by scripts/setup.sh into KEYGATE_E2E_TS) through
// keygate to the real MCP reference server (@modelcontextprotocol/server-everything), over
// Streamable HTTP (`StreamableHTTPClientTransport` + `Client`), with a static bearer token.
//
// MODE `passthrough`: MCP_URL is `{URL}/apps/{appId}/mcp/{slug}`; the upstream's own names.
// MODE `aggregated`: MCP_URL is `{URL}/apps/{appId}/mcp`; SLUGS (comma-separated, at least two)
// name the attached server-everything integrations: tools and prompts are `{slug}_{name}` and
// route by that prefix, and each upstream's server-to-client requests reach this client with
// string ids `{slug}~{id}`.
//
// Checks: initialize; tools/list (re-listed for up to 5 s until the sampling and elicitation
// tools, which the server registers once it has seen the client's capabilities, are there); echo;
// get-sum; the long-running tool's progress notifications reach `onprogress` before the result;
// the sampling tool's sampling/createMessage reaches this client's handler and the tool result
// carries its answer (likewise the elicitation tool's elicitation/create); prompts/list +
// prompts/get; resources/list + resources/read; session termination (DELETE) on close.
//
// Usage: MCP_TOKEN=... node typescript_client.mjs passthrough MCP_URL
//        MCP_TOKEN=... node typescript_client.mjs aggregated MCP_URL SLUGS

import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const PINNED_SDK = "1.32.2";
const STEP_TIMEOUT_MS = 15_000; // per protocol step
const TOTAL_TIMEOUT_MS = 45_000;

// The SDK lives in the npm prefix scripts/setup.sh installs, not next to this script, so its
// modules are imported by path (its package.json maps "./*" to "./dist/esm/*" for `import`).
const PREFIX = process.env.KEYGATE_E2E_TS || join(homedir(), ".cache/keygate-e2e/ts");
const SDK_DIR = join(PREFIX, "node_modules/@modelcontextprotocol/sdk");
const sdkVersion = JSON.parse(readFileSync(join(SDK_DIR, "package.json"), "utf8")).version;
const sdk = (path) => import(pathToFileURL(join(SDK_DIR, "dist/esm", path)).href);
const { Client } = await sdk("client/index.js");
const { StreamableHTTPClientTransport } = await sdk("client/streamableHttp.js");
const { CreateMessageRequestSchema, ElicitRequestSchema } = await sdk("types.js");

// The pinned server's names (see server_everything.py).
const TOOL_ECHO = "echo";
const TOOL_SUM = "get-sum";
const TOOL_LONG = "trigger-long-running-operation";
const TOOL_SAMPLING = "trigger-sampling-request";
const TOOL_ELICITATION = "trigger-elicitation-request";
const STATIC_DOC = "demo://resource/static/document/features.md";
const PROMPT_SIMPLE = "simple-prompt";
const PROMPT_ARGS = "args-prompt";

const PASSED = []; // the checks that passed
const TRACE = []; // every HTTP request the transport made, and its answer
const NONCE = randomUUID().slice(0, 12);

class Failure extends Error {}
function check(cond, what) {
  if (!cond) throw new Failure(what);
}
function log(line) {
  PASSED.push(line);
  if (process.env.KEYGATE_E2E_VERBOSE === "1") console.error(`  ok: ${line}`);
}
const show = (v) => JSON.stringify(v)?.slice(0, 600);
const texts = (result) => (result.content ?? []).filter((c) => c.type === "text").map((c) => c.text).join("\n");

/** Runs one protocol step under a deadline, naming it if it hangs. */
async function step(what, fn, timeoutMs = STEP_TIMEOUT_MS) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Failure(`${what}: no answer within ${timeoutMs / 1000}s`)), timeoutMs);
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

/** The transport's fetch, recording each request and its answer (never reading a stream). */
async function tracedFetch(url, init) {
  const method = init?.method ?? "GET";
  const sent = typeof init?.body === "string" ? ` ${init.body.slice(0, 300)}` : "";
  TRACE.push(`-> ${method} ${url}${sent}`);
  let response;
  try {
    response = await fetch(url, init);
  } catch (e) {
    TRACE.push(`<- (fetch failed) ${method} ${url}: ${e}`);
    throw e;
  }
  const type = response.headers.get("content-type") ?? "";
  let body = "";
  if (!type.includes("event-stream")) {
    body = (await response.clone().text()).slice(0, 300).replace(/\n/g, " ");
  }
  TRACE.push(`<- ${response.status} ${method} ${url} [${type}] ${body}`);
  return response;
}

/** The handlers the server reaches back into, and what they saw. */
function makeClient() {
  const seen = { sampling: [], elicitation: [] };
  const client = new Client(
    { name: "keygate-e2e-typescript-client", version: sdkVersion },
    { capabilities: { sampling: {}, elicitation: {} } },
  );
  client.setRequestHandler(CreateMessageRequestSchema, async (request, extra) => {
    seen.sampling.push({ id: extra.requestId, params: request.params });
    return {
      role: "assistant",
      content: { type: "text", text: `sampled-by-typescript-${NONCE}` },
      model: `keygate-e2e-model-${NONCE}`,
      stopReason: "endTurn",
    };
  });
  client.setRequestHandler(ElicitRequestSchema, async (request, extra) => {
    seen.elicitation.push({ id: extra.requestId, params: request.params });
    return { action: "accept", content: { name: `Ada ${NONCE}`, check: true, email: "ada@example.com", integer: 7 } };
  });
  return { client, seen };
}

const opts = { timeout: STEP_TIMEOUT_MS };

async function listToolsUntil(client, wanted) {
  const deadline = Date.now() + 5000;
  let names;
  for (;;) {
    const r = await step("tools/list", () => client.listTools({}, opts));
    names = new Set(r.tools.map((t) => t.name));
    if (wanted.every((n) => names.has(n)) || Date.now() > deadline) break;
    await new Promise((res) => setTimeout(res, 200));
  }
  const missing = wanted.filter((n) => !names.has(n));
  check(missing.length === 0, `tools/list lacks ${show(missing)}; it has ${show([...names].sort())}`);
  return names;
}

async function callEcho(client, tool) {
  const message = `hello through keygate ${NONCE} via ${tool} ✓`;
  const r = await step(`tools/call ${tool}`, () => client.callTool({ name: tool, arguments: { message } }, undefined, opts));
  check(!r.isError && texts(r) === `Echo: ${message}`, `${tool} answered ${show(r)}`);
  log(`tools/call ${tool}: ${JSON.stringify(texts(r))}`);
}

async function callSum(client, tool) {
  const r = await step(`tools/call ${tool}`, () => client.callTool({ name: tool, arguments: { a: 19, b: 23.5 } }, undefined, opts));
  check(!r.isError && texts(r) === "The sum of 19 and 23.5 is 42.5.", `${tool} answered ${show(r)}`);
  log(`tools/call ${tool}: ${JSON.stringify(texts(r))}`);
}

async function callLongRunning(client, tool) {
  const progress = [];
  const at = [];
  const r = await step(`tools/call ${tool}`, () =>
    client.callTool({ name: tool, arguments: { duration: 1.5, steps: 3 } }, undefined, {
      ...opts,
      onprogress: (p) => {
        progress.push([p.progress, p.total]);
        at.push(Date.now());
      },
    }),
  );
  const doneAt = Date.now();
  check(!r.isError && texts(r).includes("Long running operation completed. Duration: 1.5 seconds, Steps: 3."),
    `${tool} answered ${show(r)}`);
  check(show(progress) === show([[1, 3], [2, 3], [3, 3]]),
    `${tool}: progress notifications received: ${show(progress)}, expected 1/3, 2/3, 3/3`);
  // The first step ends 0.5 s in and the result comes 1 s later: a gateway that buffered the
  // response stream would deliver all of it at once.
  const lead = (doneAt - at[0]) / 1000;
  check(lead > 0.25, `${tool}: the first progress notification arrived only ${lead.toFixed(2)}s before the result: the stream is buffered`);
  log(`tools/call ${tool}: done, progress ${show(progress)} via onprogress, the first ${lead.toFixed(2)}s before the result`);
}

/** `idPrefix`: the string the request's id must start with (the aggregated route's `{slug}~`). */
async function callSampling(client, seen, tool, idPrefix) {
  const before = seen.sampling.length;
  const prompt = `What is keygate? (${NONCE}, ${tool})`;
  const r = await step(`tools/call ${tool}`, () =>
    client.callTool({ name: tool, arguments: { prompt, maxTokens: 64 } }, undefined, opts));
  check(seen.sampling.length === before + 1,
    `the sampling/createMessage handler ran ${seen.sampling.length - before} times for ${tool}, expected once`);
  const { id, params } = seen.sampling.at(-1);
  const got = params.messages.map((m) => m.content?.text);
  check(show(got) === show([`Resource ${TOOL_SAMPLING} context: ${prompt}`]) && params.maxTokens === 64,
    `sampling/createMessage the client received: ${show(params)}`);
  if (idPrefix !== undefined) {
    check(typeof id === "string" && id.startsWith(idPrefix) && id.length > idPrefix.length,
      `sampling/createMessage reached the client with id ${show(id)}, expected a string ${idPrefix}...`);
  }
  check(!r.isError, `${tool} answered an error: ${show(r)}`);
  const body = texts(r);
  check(body.includes(`sampled-by-typescript-${NONCE}`) && body.includes(`keygate-e2e-model-${NONCE}`),
    `${tool}'s result does not carry the handler's answer: ${body.slice(0, 600)}`);
  log(`tools/call ${tool}: sampling/createMessage (id ${show(id)}) answered by the client's handler, result carries it`);
}

async function callElicitation(client, seen, tool, idPrefix) {
  const before = seen.elicitation.length;
  const r = await step(`tools/call ${tool}`, () => client.callTool({ name: tool, arguments: {} }, undefined, opts));
  check(seen.elicitation.length === before + 1,
    `the elicitation/create handler ran ${seen.elicitation.length - before} times for ${tool}, expected once`);
  const { id, params } = seen.elicitation.at(-1);
  check(params.requestedSchema?.properties?.name !== undefined, `elicitation/create the client received: ${show(params)}`);
  if (idPrefix !== undefined) {
    check(typeof id === "string" && id.startsWith(idPrefix) && id.length > idPrefix.length,
      `elicitation/create reached the client with id ${show(id)}, expected a string ${idPrefix}...`);
  }
  check(!r.isError, `${tool} answered an error: ${show(r)}`);
  const body = texts(r);
  for (const line of [`- Name: Ada ${NONCE}`, "- Agreed to terms: true", "- Email: ada@example.com", "- Favorite Integer: 7"]) {
    check(body.includes(line), `${tool}'s result lacks ${show(line)}: ${body.slice(0, 800)}`);
  }
  log(`tools/call ${tool}: elicitation/create (id ${show(id)}) accepted by the client's handler, result carries it`);
}

async function checkPrompts(client, simple, args, wanted) {
  const pr = await step("prompts/list", () => client.listPrompts({}, opts));
  const names = new Set(pr.prompts.map((p) => p.name));
  const missing = wanted.filter((n) => !names.has(n));
  check(missing.length === 0, `prompts/list lacks ${show(missing)}: ${show([...names].sort())}`);
  let gp = await step(`prompts/get ${simple}`, () => client.getPrompt({ name: simple }, opts));
  check(show(gp.messages.map((m) => m.content.text)) === show(["This is a simple prompt without arguments."]),
    `prompts/get ${simple}: ${show(gp)}`);
  gp = await step(`prompts/get ${args}`, () => client.getPrompt({ name: args, arguments: { city: "Lisbon", state: "Portugal" } }, opts));
  check(show(gp.messages.map((m) => m.content.text)) === show(["What's weather in Lisbon, Portugal?"]),
    `prompts/get ${args}: ${show(gp)}`);
  log(`prompts/list: ${names.size} prompts, including ${wanted.join(", ")}; prompts/get ${simple}, ${args}: ok`);
}

async function checkResources(client) {
  const res = await step("resources/list", () => client.listResources({}, opts));
  const uris = res.resources.map((r) => r.uri);
  check(uris.includes(STATIC_DOC), `resources/list lacks ${STATIC_DOC}: ${show(uris)}`);
  const rr = await step(`resources/read ${STATIC_DOC}`, () => client.readResource({ uri: STATIC_DOC }, opts));
  const doc = rr.contents[0];
  check(typeof doc?.text === "string" && doc.text.includes("# Everything Server - Features") && doc.text.includes(`\`${TOOL_SAMPLING}\``),
    `resources/read ${STATIC_DOC}: ${show(rr)}`);
  log(`resources/list: ${uris.length} resources; resources/read ${STATIC_DOC}: ${doc.text.length} chars`);
}

async function exercisePassthrough(client, seen) {
  const info = client.getServerVersion();
  const caps = client.getServerCapabilities();
  check(info?.name === "mcp-servers/everything", `initialize: serverInfo is ${show(info)}`);
  check(caps?.tools && caps?.prompts && caps?.resources, `initialize: capabilities ${show(caps)}`);
  log(`initialize: ${info.name} ${info.version}`);

  const wanted = [TOOL_ECHO, TOOL_SUM, TOOL_LONG, TOOL_SAMPLING, TOOL_ELICITATION];
  const names = await listToolsUntil(client, wanted);
  log(`tools/list: ${names.size} tools, including ${wanted.join(", ")}`);

  await callEcho(client, TOOL_ECHO);
  await callSum(client, TOOL_SUM);
  await callLongRunning(client, TOOL_LONG);
  await callSampling(client, seen, TOOL_SAMPLING);
  await callElicitation(client, seen, TOOL_ELICITATION);
  await checkPrompts(client, PROMPT_SIMPLE, PROMPT_ARGS, [PROMPT_SIMPLE, PROMPT_ARGS]);
  await checkResources(client);
}

async function exerciseAggregated(client, seen, slugs) {
  const [a, b] = slugs;
  const info = client.getServerVersion();
  const caps = client.getServerCapabilities();
  check(info?.name === "keygate", `initialize: serverInfo is ${show(info)}, expected keygate`);
  check(caps?.tools && caps?.prompts && caps?.resources, `initialize: capabilities ${show(caps)}`);
  const instructions = client.getInstructions() ?? "";
  for (const slug of slugs) {
    check(instructions.includes(`${slug}: `) && !instructions.includes(`${slug}: unavailable`),
      `initialize: the instructions do not list ${slug} as available: ${show(instructions)}`);
  }
  log(`initialize: ${info.name} ${info.version}; instructions: ${show(instructions)}`);

  const wanted = slugs.flatMap((s) => [TOOL_ECHO, TOOL_SUM, TOOL_LONG, TOOL_SAMPLING, TOOL_ELICITATION].map((t) => `${s}_${t}`));
  const names = await listToolsUntil(client, wanted);
  const unprefixed = [...names].filter((n) => !slugs.some((s) => n.startsWith(`${s}_`)));
  check(unprefixed.length === 0, `tools/list has names without a ${slugs.join("/")} prefix: ${show(unprefixed)}`);
  log(`tools/list: ${names.size} tools, including ${wanted.join(", ")}`);

  await callEcho(client, `${a}_${TOOL_ECHO}`);
  await callEcho(client, `${b}_${TOOL_ECHO}`);
  await callSum(client, `${b}_${TOOL_SUM}`);
  await callLongRunning(client, `${a}_${TOOL_LONG}`);
  await callSampling(client, seen, `${a}_${TOOL_SAMPLING}`, `${a}~`);
  await callSampling(client, seen, `${b}_${TOOL_SAMPLING}`, `${b}~`);
  await callElicitation(client, seen, `${b}_${TOOL_ELICITATION}`, `${b}~`);
  await checkPrompts(client, `${a}_${PROMPT_SIMPLE}`, `${b}_${PROMPT_ARGS}`,
    slugs.flatMap((s) => [PROMPT_SIMPLE, PROMPT_ARGS].map((p) => `${s}_${p}`)));
  await checkResources(client);
}

async function run(mode, mcpUrl, token, slugs) {
  check(sdkVersion === PINNED_SDK, `@modelcontextprotocol/sdk in ${PREFIX} is ${sdkVersion}, expected ${PINNED_SDK}: run scripts/setup.sh`);
  const { client, seen } = makeClient();
  const transportErrors = [];
  const transport = new StreamableHTTPClientTransport(new URL(mcpUrl), {
    requestInit: { headers: { Authorization: `Bearer ${token}` } },
    fetch: tracedFetch,
  });
  client.onerror = (e) => transportErrors.push(String(e?.stack ?? e));
  try {
    await step("initialize (connect)", () => client.connect(transport, opts));
    log(`connect: session ${String(transport.sessionId).slice(0, 16)}…, protocol ${transport.protocolVersion}, @modelcontextprotocol/sdk ${sdkVersion}`);
    if (mode === "passthrough") await exercisePassthrough(client, seen);
    else await exerciseAggregated(client, seen, slugs);
    check(transportErrors.length === 0, `the client reported errors: ${show(transportErrors)}`);
    // Session termination, through the gateway (the SDK throws unless 2xx or 405).
    await step("DELETE (terminate session)", () => transport.terminateSession());
    const del = TRACE.filter((t) => t.startsWith("<- ") && t.includes(" DELETE "));
    check(del.some((t) => t.startsWith("<- 200 ")), `session DELETE did not answer 200: ${show(del)}`);
    log("DELETE (session termination): 200");
  } finally {
    await client.close().catch(() => {});
  }
  const strays = TRACE.filter((t) => t.startsWith("-> ") && !t.split(" ")[2].startsWith(mcpUrl));
  check(strays.length === 0, `the transport talked to something other than ${mcpUrl}: ${show(strays)}`);
}

const [mode, mcpUrl, slugArg] = process.argv.slice(2);
const token = process.env.MCP_TOKEN;
const slugs = slugArg ? slugArg.split(",") : [];
if (!((mode === "passthrough" && mcpUrl && !slugArg) || (mode === "aggregated" && mcpUrl && slugs.length >= 2)) || !token) {
  console.error("usage: MCP_TOKEN=... node typescript_client.mjs passthrough MCP_URL | aggregated MCP_URL SLUGS");
  process.exit(2);
}
const overall = setTimeout(() => {
  console.error(`FAIL [${mode}]: timed out after ${TOTAL_TIMEOUT_MS / 1000}s`);
  console.error(`passed before that:\n  ${PASSED.join("\n  ") || "(nothing)"}`);
  console.error(`transport requests:\n${TRACE.slice(-40).join("\n")}`);
  process.exit(1);
}, TOTAL_TIMEOUT_MS);
try {
  await run(mode, mcpUrl, token, slugs);
} catch (e) {
  console.error(`FAIL [${mode}]: ${e instanceof Failure ? e.message : e?.stack ?? e}`);
  console.error(`passed before that:\n  ${PASSED.join("\n  ") || "(nothing)"}`);
  console.error(`transport requests:\n${TRACE.slice(-40).join("\n")}`);
  process.exit(1);
}
clearTimeout(overall);
console.log(PASSED.map((l) => `[${mode}] ${l}`).join("\n"));
process.exit(0);
