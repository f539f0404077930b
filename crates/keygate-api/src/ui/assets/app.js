// The dashboard's only script (served from /ui/assets, no inline code): copy buttons and the
// live tail of the traces page over /ui/events/stream.
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

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button.copy")) {
    button.addEventListener("click", () => copyField(button));
  }
  const events = document.getElementById("events");
  if (events) followEvents(events);
});
