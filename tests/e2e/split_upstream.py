"""A raw MCP upstream (no SDK: asyncio and bytes) whose every SSE answer arrives in pieces.

For aggregated_pipeline.sh: it speaks just enough 2025-era Streamable HTTP (initialize with a
session id, notifications, ping, tools/list, tools/call of `echo`; server/discover and any other
method answered -32601; GET 405; DELETE 200) and answers each request with one SSE event, sent
as chunked HTTP in separate TCP writes: the first write ends inside the first multi-byte UTF-8
character of the event (the `é` of `café crème`, which the tool's description, the tool's
result and the server's name carry); with EOL `crlf` every line ends with CRLF and a further
write falls between the CR and the LF ending the `data` line. A gateway that decoded UTF-8 per
network frame, or took a lone CR for the end of a line and then an empty line, would hand the
client U+FFFD or a broken event.

Usage: python split_upstream.py PORT lf|crlf
"""

import asyncio
import json
import socket
import sys
import uuid

PAUSE = 0.05  # seconds between two writes, so they leave as separate segments
WORDS = "café crème"


def tools() -> list[dict]:
    return [{"name": "echo", "description": f"Echoes, {WORDS} included",
             "inputSchema": {"type": "object", "properties": {"message": {"type": "string"}}}}]


def answer(request: dict) -> dict:
    method, rid, params = request.get("method"), request.get("id"), request.get("params") or {}
    if method == "initialize":
        result = {"protocolVersion": params.get("protocolVersion", "2025-06-18"),
                  "capabilities": {"tools": {}}, "serverInfo": {"name": f"split {WORDS}", "version": "1"}}
    elif method == "ping":
        result = {}
    elif method == "tools/list":
        result = {"tools": tools()}
    elif method == "tools/call" and params.get("name") == "echo":
        message = (params.get("arguments") or {}).get("message", "")
        result = {"content": [{"type": "text", "text": f"{WORDS}: {message}"}]}
    else:
        return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": f"no method {method}"}}
    return {"jsonrpc": "2.0", "id": rid, "result": result}


def pieces(event: bytes, eol: bytes) -> list[bytes]:
    """The event cut inside its first multi-byte character and, with CRLF, between the CR and
    the LF that end its data line."""
    cuts = []
    first = next((i for i, b in enumerate(event) if b >= 0xC0), None)
    if first is not None:
        cuts.append(first + 1)
    if eol == b"\r\n":
        cuts.append(event.index(b"\r\n\r\n") + 1)
    cuts = sorted(set(cuts))
    return [event[a:b] for a, b in zip([0, *cuts], [*cuts, len(event)])]


async def read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes] | None:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method = lines[0].split(" ")[0]
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return method, headers, body


async def send_plain(writer: asyncio.StreamWriter, status: str, extra: str = "") -> None:
    writer.write(f"HTTP/1.1 {status}\r\ncontent-length: 0\r\n{extra}\r\n".encode())
    await writer.drain()


async def send_split(writer: asyncio.StreamWriter, message: dict, eol: bytes, session: str | None) -> None:
    data = json.dumps(message, ensure_ascii=False).encode()
    event = b"event: message" + eol + b"data: " + data + eol + eol
    head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
    if session:
        head += f"mcp-session-id: {session}\r\n"
    writer.write((head + "\r\n").encode())
    for piece in pieces(event, eol):
        writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        await writer.drain()
        await asyncio.sleep(PAUSE)
    writer.write(b"0\r\n\r\n")
    await writer.drain()


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, eol: bytes) -> None:
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            method, headers, body = await read_request(reader)
            if method == "GET":
                await send_plain(writer, "405 Method Not Allowed", "allow: POST, DELETE\r\n")
            elif method == "DELETE":
                await send_plain(writer, "200 OK")
            elif method != "POST":
                await send_plain(writer, "405 Method Not Allowed")
            else:
                message = json.loads(body)
                if "id" not in message or "method" not in message:  # a notification or a response
                    await send_plain(writer, "202 Accepted")
                    continue
                new_session = uuid.uuid4().hex if message["method"] == "initialize" else None
                await send_split(writer, answer(message), eol, new_session)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int, eol: bytes) -> None:
    server = await asyncio.start_server(lambda r, w: serve(r, w, eol), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[2] not in ("lf", "crlf"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    asyncio.run(main(int(sys.argv[1]), b"\r\n" if sys.argv[2] == "crlf" else b"\n"))
