// The dashboard's only script (served from /ui/assets, no inline code): copy buttons, the
// live tail of the traces page over /ui/events/stream, the access graph's highlighting and
// overlay switch, and the policy editor's jump to a problem's line and column.
"use strict";

function copyField(button) {
  const field = document.getElementById(button.dataset.copy);
  if (!field) return;
  const done = () => {
    const label = button.textContent;
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = label; }, 1500);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(field.value).then(done, () => { field.select(); });
  } else {
    field.select();
    document.execCommand("copy");
    done();
  }
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  return td;
}

function followEvents(table) {
  const state = document.getElementById("tail-state");
  const body = table.tBodies[0];
  const after = table.dataset.after;
  const source = new EventSource("/ui/events/stream" + (after ? "?after=" + encodeURIComponent(after) : ""));
  source.onopen = () => { if (state) state.textContent = "Live: new calls appear as they happen."; };
  source.onerror = () => { if (state) state.textContent = "Live tail interrupted; reconnecting…"; };
  source.onmessage = (message) => {
    let e;
    try { e = JSON.parse(message.data); } catch (_) { return; }
    const row = document.createElement("tr");
    row.dataset.id = e.id;
    row.className = "live";
    row.append(cell(e.createdAt), cell(e.eventType), cell(e.toolName), cell(e.status),
      cell(e.durationMs + " ms"), cell(e.errorMessage));
    body.prepend(row);
    const empty = document.getElementById("events-empty");
    if (empty) empty.remove();
    while (body.rows.length > 500) body.deleteRow(-1);
  };
}

// Dims everything in the access graph but `id` and the lines and nodes joined to it.
function highlight(figure, id) {
  figure.classList.toggle("focused", id !== "");
  for (const el of figure.querySelectorAll(".hot")) el.classList.remove("hot");
  if (id === "") return;
  const near = new Set([id]);
  for (const edge of figure.querySelectorAll(".edge")) {
    if (edge.dataset.from === id || edge.dataset.to === id) {
      edge.classList.add("hot");
      near.add(edge.dataset.from);
      near.add(edge.dataset.to);
    }
  }
  for (const node of figure.querySelectorAll(".node")) {
    if (near.has(node.dataset.node)) node.classList.add("hot");
  }
}

function accessGraph(svg) {
  const figure = svg.closest("figure");
  const tools = document.getElementById("graph-tools");
  const select = document.getElementById("graph-focus");
  const overlay = document.getElementById("graph-overlay");
  if (tools) tools.hidden = false;
  if (select) select.addEventListener("change", () => highlight(figure, select.value));
  if (overlay) overlay.addEventListener("change", () => figure.classList.toggle("no-overlay", !overlay.checked));
  for (const node of svg.querySelectorAll(".node")) {
    node.addEventListener("mouseenter", () => highlight(figure, node.dataset.node));
    node.addEventListener("mouseleave", () => highlight(figure, select ? select.value : ""));
  }
}

// Puts the policy editor's caret at the line and column a problem link names.
function jumpTo(link) {
  const area = document.getElementById(link.dataset.field);
  if (!area) return;
  const line = Number(link.dataset.line) || 1;
  const column = Number(link.dataset.column) || 1;
  const lines = area.value.split("\n");
  let offset = 0;
  for (let i = 0; i < line - 1 && i < lines.length; i++) offset += lines[i].length + 1;
  offset += Math.min(column - 1, (lines[line - 1] || "").length);
  area.focus();
  area.setSelectionRange(offset, offset + 1);
}

document.addEventListener("DOMContentLoaded", () => {
  const graph = document.getElementById("access-graph");
  if (graph) accessGraph(graph);
  for (const link of document.querySelectorAll("a.problem")) {
    link.addEventListener("click", (event) => { event.preventDefault(); jumpTo(link); });
  }
  for (const button of document.querySelectorAll("button.copy")) {
    button.addEventListener("click", () => copyField(button));
  }
  const events = document.getElementById("events");
  if (events) followEvents(events);
});
