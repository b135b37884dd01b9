// Passerelle dashboard: live counters over server-sent events, inline-SVG sparklines, confirmations.
// No build step, no framework; loaded with `defer` (the CSP forbids inline scripts).
"use strict";

function sparkPoints(values) {
  const nums = values.map((v) => (v === null || v === undefined ? 0 : Number(v)));
  const max = Math.max(1, ...nums);
  const step = nums.length > 1 ? 120 / (nums.length - 1) : 120;
  return nums.map((v, i) => `${(i * step).toFixed(1)},${(29 - (v / max) * 27).toFixed(1)}`).join(" ");
}

function lookup(object, path) {
  return path.split(".").reduce((o, k) => (o === null || o === undefined ? undefined : o[k]), object);
}

function renderQueues(tbody, queues) {
  tbody.replaceChildren(...queues.map((q) => {
    const tr = document.createElement("tr");
    for (const text of [q.destination, q.depth, q.in_flight, `${q.oldest_age} s`, q.dead]) {
      const td = document.createElement("td");
      td.textContent = String(text);
      tr.appendChild(td);
    }
    return tr;
  }));
}

function renderAlerts(alerts) {
  const box = document.getElementById("alerts");
  if (!box) return;
  box.classList.toggle("hidden", alerts.length === 0);
  box.replaceChildren(...alerts.map((a) => {
    const span = document.createElement("span");
    span.className = "alert";
    const where = a.destination ? `${a.channel} → ${a.destination}` : a.channel;
    span.textContent = `⚠ ${a.name}: ${where} (${a.kind} ${a.value} > ${a.threshold})`;
    return span;
  }));
}

function update(snapshot) {
  for (const channel of snapshot.channels) {
    for (const card of document.querySelectorAll(`[data-channel="${CSS.escape(channel.name)}"]`)) {
      for (const el of card.querySelectorAll("[data-bind]")) {
        const key = el.dataset.bind;
        let value = lookup(channel, key);
        if (key === "up") {
          el.textContent = value ? "listening" : "down";
          el.className = `state ${value ? "up" : "down"}`;
          continue;
        }
        if (key === "last_error" && !value && channel.last_rejection) value = channel.last_rejection.error;
        el.textContent = value === null || value === undefined ? (key.startsWith("counts.") ? "0" : "–") : String(value);
      }
      for (const svg of card.querySelectorAll("svg[data-spark]")) {
        svg.querySelector("polyline").setAttribute("points", sparkPoints(channel[svg.dataset.spark] || []));
      }
      const tbody = card.querySelector("[data-queues]");
      if (tbody) renderQueues(tbody, channel.queues);
    }
  }
  renderAlerts(snapshot.alerts || []);
  const stamp = document.querySelector("[data-live-at]");
  if (stamp) stamp.textContent = `live · ${new Date(snapshot.at * 1000).toLocaleTimeString()}`;
}

function connect() {
  // Every signed-in page shows the alert banner (base.html), so every one of them follows the live
  // snapshot; the overview and channel pages also update their cards ([data-live]).
  if (!document.getElementById("alerts")) return;
  const source = new EventSource("/events");
  source.onmessage = (event) => update(JSON.parse(event.data));
  source.onerror = () => {
    const stamp = document.querySelector("[data-live-at]");
    if (stamp) stamp.textContent = "reconnecting…";
  };
}

function wireForms() {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
  for (const box of document.querySelectorAll("input[data-select-all]")) {
    box.addEventListener("change", () => {
      for (const item of box.form.querySelectorAll(`input[name="${box.dataset.selectAll}"]`)) item.checked = box.checked;
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  wireForms();
  connect();
});
