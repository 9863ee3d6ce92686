// The obsbus dashboard: one EventSource on /ops/stream; each message is the whole snapshot
// (services/ops/snapshot.py), rendered into the tables below. No framework, no CDN.
"use strict";

const $ = (sel) => document.querySelector(sel);
const text = (v) => (v === null || v === undefined ? "" : String(v));
const secs = (v) => (v === null || v === undefined ? "–" : v < 10 ? v.toFixed(2) + " s" : v.toFixed(0) + " s");
const hhmmss = (iso) => (iso ? iso.slice(11, 19) : "");

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else if (k === "title") node.title = v;
    else if (k === "onclick") node.addEventListener("click", v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(text(c)));
  return node;
}

function fill(tbody, rows, empty, columns) {
  tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { class: "empty" }, empty))]));
  if (!rows.length && columns) tbody.firstChild.firstChild.colSpan = columns;
}

function bar(row) {
  const total = row.expected || row.files || 1;
  const done = (100 * row.detectors_done) / total;
  const failed = Math.min(100 - done, (100 * row.failed) / total);
  return el("div", { class: "bar", title: `${row.detectors_done} of ${row.expected || "?"} detectors registered` },
    el("span", { class: "done", "data-w": done }),
    el("span", { class: "failed", "data-w": failed, "data-l": done }),
    el("label", {}, `${row.detectors_done} / ${row.expected || "?"}`));
}

function renderExposures(snap) {
  const rows = snap.exposures.map((r) =>
    el("tr", { class: "clickable", "data-exposure": `${r.instrument}/${r.exposure}`,
               onclick: () => showExposure(r.instrument, r.exposure) },
      el("td", {}, r.instrument), el("td", {}, r.exposure), el("td", {}, bar(r)),
      el("td", { class: "ingested" }, r.ingested), el("td", { class: "present" }, r.already_present),
      el("td", { class: "failed" }, r.failed), el("td", { class: "waiting" }, r.waiting),
      el("td", {}, secs(r.p50_s)), el("td", {}, secs(r.p99_s)), el("td", {}, hhmmss(r.last_at)),
      el("td", { class: "flag" }, text(r.flag))));
  fill($("#exposures tbody"), rows, "no exposures in the window yet", 11);
  for (const s of document.querySelectorAll(".bar span")) {
    s.style.width = s.dataset.w + "%";
    if (s.dataset.l) s.style.left = s.dataset.l + "%";
  }
  $("#gaps").replaceChildren(...snap.gaps.map((g) =>
    el("div", {}, `${g.instrument}: no exposure ${g.missing.join(", ")} after ${g.after}`)));
  $("#window").textContent = `last ${(snap.window_s / 3600).toFixed(0)} h, newest first`;
}

const previous = {};
function renderServices(snap) {
  const now = Date.now() / 1000;
  const rows = snap.services.map((s) => {
    let rate = "";
    const before = previous[s.service];
    if (before && s.consumed !== null && s.consumed !== undefined && now > before.t) {
      rate = ((s.consumed - before.consumed) / (now - before.t)).toFixed(1);
    }
    if (s.consumed !== null && s.consumed !== undefined) previous[s.service] = { t: now, consumed: s.consumed };
    return el("tr", { "data-service": s.service, title: text(s.reason) },
      el("td", {}, s.service), el("td", { class: `state state-${s.state}` }, s.state),
      el("td", {}, text(s.pid)), el("td", {}, text(s.restarts)), el("td", { class: "lag" }, text(s.lag)),
      el("td", {}, text(s.consumed)), el("td", {}, rate), el("td", {}, text(s.last_message).slice(11, 19)));
  });
  fill($("#services tbody"), rows, "no services have run in this repository", 8);
  const broker = snap.services.find((s) => s.service === "broker");
  const pill = $("#broker");
  pill.textContent = broker ? `broker ${broker.state}` : "broker: not started by up";
  pill.className = "pill " + (broker ? (broker.state === "reachable" ? "ok" : "bad") : "warn");
}

function renderLatency(snap) {
  const svg = $("#latency");
  const series = snap.latency.series;
  const W = 800, H = 180, pad = 28;
  if (!series.length) {
    svg.innerHTML = `<text x="${W / 2}" y="${H / 2}" text-anchor="middle">no outcomes yet</text>`;
    return;
  }
  const top = Math.max(1, ...series.map((p) => p.p99_s || 0)) * 1.1;
  const x = (i) => pad + (series.length === 1 ? (W - 2 * pad) / 2 : (i * (W - 2 * pad)) / (series.length - 1));
  const y = (v) => H - pad - ((v || 0) * (H - 2 * pad)) / top;
  const line = (key) => series.map((p, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" ");
  const ticks = [0, top / 2, top].map((v) =>
    `<text x="2" y="${y(v) + 4}">${v.toFixed(v < 10 ? 1 : 0)} s</text>` +
    `<line x1="${pad}" x2="${W - pad}" y1="${y(v)}" y2="${y(v)}" stroke="#21262d"/>`).join("");
  const labels = [0, series.length - 1].map((i) =>
    `<text x="${x(i)}" y="${H - 6}" text-anchor="middle">${hhmmss(series[i].minute).slice(0, 5)}</text>`).join("");
  svg.innerHTML = ticks + labels +
    `<path d="${line("p99_s")}" fill="none" stroke="#d29922" stroke-width="2"/>` +
    `<path d="${line("p50_s")}" fill="none" stroke="#58a6ff" stroke-width="2"/>` +
    series.map((p, i) => `<circle cx="${x(i)}" cy="${y(p.p99_s)}" r="3" fill="#d29922"/>` +
      `<circle cx="${x(i)}" cy="${y(p.p50_s)}" r="3" fill="#58a6ff"/>`).join("") +
    `<text x="${W - pad}" y="14" text-anchor="end"><tspan fill="#58a6ff">p50</tspan>  <tspan fill="#d29922">p99</tspan></text>`;
}

function renderFailures(snap) {
  const most = Math.max(1, ...snap.failures.by_reason.map((r) => r.files));
  $("#reasons").replaceChildren(...snap.failures.by_reason.map((r) =>
    el("div", { class: "reason", "data-reason": r.reason },
      el("code", {}, r.reason), el("span", { class: "r-bar", "data-w": (100 * r.files) / most }), el("b", {}, r.files))));
  for (const s of document.querySelectorAll(".r-bar")) s.style.width = 1.5 * s.dataset.w + "px";
  fill($("#failures tbody"), snap.failures.latest.map((f) =>
    el("tr", { "data-file": f.file }, el("td", {}, hhmmss(f.at)), el("td", {}, el("code", {}, text(f.reason))),
      el("td", { class: "msg", title: f.file }, f.message || f.file))), "no failures", 3);
}

function renderDeadLetters(snap) {
  const d = snap.dead_letters;
  $("#dead-count").textContent = d.count;
  $("#dead-count").className = "count" + (d.count ? " bad" : "");
  fill($("#dead-letters tbody"), d.latest.map((x) =>
    el("tr", {}, el("td", {}, hhmmss(x.at)), el("td", {}, `${x.topic}[${x.partition}]@${x.offset}`),
      el("td", {}, x.service), el("td", { class: "msg" }, `${x.error_code}: ${x.error}`))), "none", 4);
}

function renderBlessings(snap) {
  const c = snap.blessings.counts;
  $("#blessing-counts").textContent = Object.entries(c).map(([k, v]) => `${v} ${k}`).join(" · ");
  fill($("#blessings tbody"), snap.blessings.latest.map((b) =>
    el("tr", { "data-request": b.request_id },
      el("td", { class: `state state-${b.status === "blessed" ? "running" : b.status === "rejected" ? "failed" : "backoff"}` }, b.status),
      el("td", {}, text(b.collection)), el("td", {}, text(b.dataset_type)),
      el("td", { class: "msg" }, b.status === "rejected" ? `${b.reason}: ${b.message}` : text(b.why)))), "no blessing requests", 4);
  fill($("#swaps tbody"), snap.swaps.map((s) =>
    el("tr", {}, el("td", {}, hhmmss(s.at)), el("td", {}, `${s.instrument} detector ${s.detector}`),
      el("td", {}, `${text(s.old_serial) || "?"} → ${s.new_serial}`), el("td", {}, text(s.exposure)))), "no swaps", 4);
}

function render(snap) {
  const t = snap.totals;
  $("#t-landed").textContent = t.landed;
  $("#t-ingested").textContent = t.ingested;
  $("#t-present").textContent = t.already_present;
  $("#t-failed").textContent = t.failed;
  $("#t-flight").textContent = snap.in_flight;
  $("#t-p50").textContent = secs(snap.latency.p50_s);
  $("#t-p99").textContent = secs(snap.latency.p99_s);
  $("#clock").textContent = `${snap.now.slice(0, 19)} TAI`;
  const feed = $("#feed");
  feed.textContent = snap.reader.caught_up ? "live" : `catching up (${snap.messages_read} read)`;
  feed.className = "pill " + (snap.reader.caught_up ? "ok" : "warn");
  renderExposures(snap);
  renderServices(snap);
  renderLatency(snap);
  renderFailures(snap);
  renderDeadLetters(snap);
  renderBlessings(snap);
}

async function showExposure(instrument, exposure) {
  const card = $("#detail-card");
  card.classList.remove("hidden");
  $("#detail-title").textContent = `${instrument} ${exposure}`;
  const answer = await fetch(`/ops/exposures/${encodeURIComponent(instrument)}/${encodeURIComponent(exposure)}`);
  const body = await answer.json();
  if (!answer.ok) {
    fill($("#detail tbody"), [], body.error ? body.error.message : "not found", 6);
    return;
  }
  fill($("#detail tbody"), body.file_list.map((f) =>
    el("tr", { "data-file": f.path }, el("td", { title: f.path }, f.path.split("/").pop()),
      el("td", { class: `state state-${f.status === "failed" ? "failed" : f.status === "landed" ? "backoff" : "running"}` }, f.status),
      el("td", {}, f.detectors.join(" ")), el("td", {}, secs(f.latency_s)),
      el("td", { class: "msg" }, f.reason ? `${f.reason}: ${f.message}` : ""),
      el("td", { class: "msg" }, f.dataset_ids.join(" ")))), "no files", 6);
}

$("#detail-close").addEventListener("click", () => $("#detail-card").classList.add("hidden"));
$("#search").addEventListener("submit", (e) => {
  e.preventDefault();
  showExposure($("#search-instrument").value.trim(), $("#search-exposure").value.trim());
});

function connect() {
  const source = new EventSource("/ops/stream");
  source.onmessage = (e) => render(JSON.parse(e.data));
  source.onerror = () => {
    const feed = $("#feed");
    feed.textContent = "dashboard unreachable: retrying";
    feed.className = "pill bad";
  };
}
connect();
