// Approval through keygate with the official MCP TypeScript SDK client (@modelcontextprotocol/sdk,
// pinned by typescript-client/package-lock.json), for policies.sh. A policy (written by
// policies.sh) makes `send_email` of policy_upstream.py need the user's approval
// (`@approval("user")`). On the pass-through route (MCP_URL/SLUG) and the aggregated route
// (MCP_URL):
//
// - a client with an elicitation handler that accepts: its handler gets `elicitation/create`
//   naming the tool, the integration and the arguments, the call's result follows, and the call
//   reached the upstream once (CALLS_LOG);
// - one that declines: the call fails with -32043 and never reaches the upstream;
// - one that did not declare the elicitation capability: -32043 saying approval is required;
// - `POST /policies/evaluate` (API_URL, MGMT_TOKEN) says `approvalRequired`.
//
// Usage: TOKEN_PASS=… TOKEN_AGG=… MGMT_TOKEN=… OWNER_ID=… OWNER_EMAIL=… APP_ID=… \
//        node policies_approval.mjs MCP_URL SLUG API_URL CALLS_LOG

import { readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const STEP_TIMEOUT_MS = 15_000;
const DENIED = -32043;
const PREFIX = process.env.KEYGATE_E2E_TS || join(homedir(), ".cache/keygate-e2e/ts");
const SDK_DIR = join(PREFIX, "node_modules/@modelcontextprotocol/sdk");
const sdk = (path) => import(pathToFileURL(join(SDK_DIR, "dist/esm", path)).href);
const { Client } = await sdk("client/index.js");
const { StreamableHTTPClientTransport } = await sdk("client/streamableHttp.js");
const { ElicitRequestSchema, McpError } = await sdk("types.js");

const [MCP_URL, SLUG, API_URL, CALLS_LOG] = process.argv.slice(2);
const ENV = process.env;
const PASSED = [];

class Failure extends Error {}
function check(cond, what) {
  if (!cond) throw new Failure(what);
}
const show = (v) => JSON.stringify(v)?.slice(0, 600);
const calls = () => {
  try {
    return readFileSync(CALLS_LOG, "utf8").split("\n").filter((l) => l === "send_email").length;
  } catch {
    return 0;
  }
};

/** A connected client on `route` (`pass`, `agg`); `answer` (accept, decline) its elicitation
 * handler's action, or null for a client without the elicitation capability. */
async function connect(route, answer) {
  const url = route === "pass" ? `${MCP_URL}/${SLUG}` : MCP_URL;
  const token = route === "pass" ? ENV.TOKEN_PASS : ENV.TOKEN_AGG;
  const asked = [];
  const capabilities = answer ? { elicitation: {} } : {};
  const client = new Client({ name: "keygate-e2e-approval", version: "1" }, { capabilities });
  if (answer) {
    client.setRequestHandler(ElicitRequestSchema, async (request, extra) => {
      asked.push({ id: extra.requestId, params: request.params });
      return answer === "accept" ? { action: "accept", content: {} } : { action: "decline" };
    });
  }
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { Authorization: `Bearer ${token}` } },
  });
  await client.connect(transport, { timeout: STEP_TIMEOUT_MS });
  return { client, asked, tool: route === "pass" ? "send_email" : `${SLUG}_send_email` };
}

async function callEmail(c) {
  return c.client.callTool({ name: c.tool, arguments: { to: "ada@example.com" } }, undefined, {
    timeout: STEP_TIMEOUT_MS,
  });
}

async function accepted(route) {
  const c = await connect(route, "accept");
  const before = calls();
  const result = await callEmail(c);
  check(!result.isError, `${route}: the approved call failed: ${show(result)}`);
  check(result.content?.[0]?.text === "sent to ada@example.com", `${route}: result ${show(result)}`);
  check(c.asked.length === 1, `${route}: asked ${c.asked.length} times`);
  const { id, params } = c.asked[0];
  check(String(id).startsWith("keygate-approval-"), `${route}: the question's id ${show(id)}`);
  for (const shown of ["send_email", SLUG, "ada@example.com"]) {
    check(params.message.includes(shown), `${route}: the question lacks ${shown}: ${params.message}`);
  }
  check(calls() === before + 1, `${route}: the approved call reached the upstream ${calls() - before} times`);
  await c.client.close();
  PASSED.push(`${route}: approval accepted, the call went through`);
}

async function refused(route, answer) {
  const c = await connect(route, answer);
  const before = calls();
  let error;
  try {
    await callEmail(c);
  } catch (e) {
    error = e;
  }
  check(error instanceof McpError && error.code === DENIED, `${route} ${answer}: ${error?.stack ?? "no error"}`);
  const expected = answer ? /declined/ : /approval.*elicitation/;
  check(expected.test(error.message), `${route} ${answer}: message ${error.message}`);
  check(c.asked.length === (answer ? 1 : 0), `${route} ${answer}: asked ${c.asked.length} times`);
  check(calls() === before, `${route} ${answer}: the refused call reached the upstream`);
  await c.client.close();
  PASSED.push(`${route}: ${answer ? "approval declined" : "no elicitation capability"}: -32043, never sent upstream`);
}

async function evaluate() {
  const body = {
    principal: { id: ENV.OWNER_ID, email: ENV.OWNER_EMAIL, role: "owner" },
    action: "call_tool",
    resource: { name: "send_email", integration: { slug: SLUG, host: "127.0.0.1" }, application: ENV.APP_ID },
    context: { arguments: { to: "ada@example.com" } },
  };
  const r = await fetch(`${API_URL}/policies/evaluate`, {
    method: "POST",
    headers: { Authorization: `Bearer ${ENV.MGMT_TOKEN}`, "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const decision = await r.json();
  check(r.status === 200 && decision.decision === "allow" && decision.approvalRequired === true,
    `evaluate: ${r.status} ${show(decision)}`);
  PASSED.push("evaluate: allow, approval required");
}

try {
  for (const route of ["pass", "agg"]) {
    await accepted(route);
    await refused(route, "decline");
    await refused(route, null);
  }
  await evaluate();
  for (const p of PASSED) console.log(`[policies_approval.mjs] ok: ${p}`);
} catch (e) {
  console.error(`[policies_approval.mjs] FAIL: ${e?.stack ?? e}`);
  for (const p of PASSED) console.error(`[policies_approval.mjs] passed: ${p}`);
  process.exit(1);
}
