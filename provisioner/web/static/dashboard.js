// provisioner dashboard: the node table kept live by server-sent events (GET /events).
// Values go in with textContent only: nothing a node reports is ever parsed as HTML.
"use strict";
(function () {
  const COLUMNS = ["name", "mac", "state", "profile", "accelerators", "ip", "last", "power"];
  const page = document.body.dataset.page;
  const live = document.getElementById("live");
  if (page !== "nodes" && page !== "node") return;
  live.hidden = false;

  function cell(row, col) {
    const td = document.createElement("td");
    td.dataset.col = col;
    fill(td, row, col);
    return td;
  }

  function fill(td, row, col) {
    td.textContent = "";
    if (col === "name") {
      const a = document.createElement("a");
      a.href = "/nodes/" + encodeURIComponent(row.mac);
      a.textContent = row.name;
      td.appendChild(a);
    } else if (col === "state") {
      const span = document.createElement("span");
      span.className = "state state-" + row.state;
      span.textContent = row.state;
      td.appendChild(span);
    } else {
      td.textContent = row[col];
    }
  }

  function upsert(tbody, row) {
    let tr = document.getElementById("node-" + row.mac);
    if (!tr) {
      tr = document.createElement("tr");
      tr.id = "node-" + row.mac;
      tr.dataset.mac = row.mac;
      for (const col of COLUMNS) tr.appendChild(cell(row, col));
      tbody.appendChild(tr);
    } else {
      for (const td of tr.querySelectorAll("td")) fill(td, row, td.dataset.col);
      tr.classList.remove("changed");
      void tr.offsetWidth; // restart the highlight
      tr.classList.add("changed");
    }
    tr.classList.toggle("failed", row.failed);
  }

  function count(tbody) {
    const counter = document.getElementById("count");
    if (counter) counter.textContent = String(tbody.rows.length);
    const empty = document.getElementById("empty");
    if (empty) empty.hidden = tbody.rows.length > 0;
  }

  function onNode(row) {
    if (page === "nodes") {
      const tbody = document.querySelector("#nodes tbody");
      upsert(tbody, row);
      count(tbody);
    } else if (row.mac === document.body.dataset.mac) {
      const state = document.getElementById("node-state");
      state.textContent = row.state;
      state.className = "state state-" + row.state;
      document.getElementById("node-last").textContent = row.last;
    }
  }

  const source = new EventSource("/events");
  source.addEventListener("open", function () {
    live.textContent = "live";
    live.classList.add("on");
  });
  source.addEventListener("error", function () {
    live.textContent = "reconnecting";
    live.classList.remove("on");
  });
  source.addEventListener("snapshot", function (e) {
    const rows = JSON.parse(e.data);
    if (page === "nodes") {
      const tbody = document.querySelector("#nodes tbody");
      const seen = new Set(rows.map(function (r) { return "node-" + r.mac; }));
      for (const tr of Array.from(tbody.rows)) if (!seen.has(tr.id)) tr.remove();
      for (const row of rows) upsert(tbody, row);
      count(tbody);
    } else {
      for (const row of rows) onNode(row);
    }
  });
  source.addEventListener("node", function (e) { onNode(JSON.parse(e.data)); });
  source.addEventListener("gone", function (e) {
    const tr = document.getElementById("node-" + JSON.parse(e.data).mac);
    if (tr) tr.remove();
  });
  source.addEventListener("resync", function () {
    source.close();
    window.location.reload();
  });
})();
