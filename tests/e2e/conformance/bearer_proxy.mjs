// Stands in for a client's OAuth in tests/e2e/conformance.sh: the conformance suite's client
// cannot authenticate, so this forwards every request to TARGET_ORIGIN (the gateway) as it
// came — path, method, headers, body, streamed both ways — adding `Authorization: Bearer
// $TOKEN`. Usage: TOKEN=… node bearer_proxy.mjs PORT TARGET_ORIGIN
import http from "node:http";

const [port, target] = process.argv.slice(2);
const token = process.env.TOKEN;
if (!port || !target || !token) {
  console.error("usage: TOKEN=… node bearer_proxy.mjs PORT TARGET_ORIGIN");
  process.exit(2);
}
const upstream = new URL(target);

http
  .createServer((req, res) => {
    const headers = { ...req.headers, authorization: `Bearer ${token}` };
    const out = http.request(
      { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers },
      (answer) => {
        res.writeHead(answer.statusCode, answer.headers);
        answer.pipe(res);
      },
    );
    out.on("error", (e) => {
      if (!res.headersSent) res.writeHead(502);
      res.end(String(e));
    });
    req.pipe(out);
    res.on("close", () => out.destroy());
  })
  .listen(Number(port), "127.0.0.1");
