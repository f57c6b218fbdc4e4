// fedbus dashboard: renders the view pushed by /events (server-sent events). No external fetches.
"use strict";
const CELLS = ["selected", "working", "sent", "accepted", "rejected", "failed", "straggling", "dropped", "offline"];
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
const num = (v, d = 3) => (typeof v === "number" ? v.toFixed(d) : "–");
let last = null;
let chosenRound = null;

function headerHtml(h) {
  const engine = h.engine === "surrogate" ? "surrogate (NOT an LLM: a seeded model)" : h.engine;
  const items = [["scenario", h.scenario], ["engine", engine], ["broker", h.broker], ["security", h.security],
    ["mode", h.mode], ["clients", h.clients], ["rounds", h.rounds], ["seed", h.seed], ["time scale", h.time_scale === 1 ? "" : h.time_scale], ["source", h.source]];
  return items.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .map(([k, v]) => `${k} <b>${esc(v)}</b>`).join(" · ");
}

function counters(v) {
  const c = v.counters, sum = (o) => Object.values(o || {}).reduce((a, b) => a + b, 0);
  const planned = v.header.rounds ? ` / ${v.header.rounds}` : "";
  const cards = [["rounds closed", `${c.rounds_closed}${planned}`], ["updates accepted", c.updates_accepted],
    ["updates rejected", c.updates_rejected], ["clients live / known", `${c.clients_live} / ${c.clients_known}`],
    ...(v.header.engine === "surrogate"
      ? [["surrogate calls (not an LLM)", sum(c.llm_calls)], ["surrogate tokens", sum(c.tokens)]]
      : [["LLM calls", sum(c.llm_calls)], ["tokens", sum(c.tokens)]]),
    ["bus messages", sum(c.bus_messages)]];
  if (Object.keys(c.bus_bytes || {}).length) cards.push(["bus bytes", sum(c.bus_bytes)]);
  if (v.final && typeof v.final.test_accuracy === "number") cards.push(["final test accuracy", num(v.final.test_accuracy)]);
  return cards.map(([k, val]) => `<div class="card" data-counter="${esc(k)}"><div class="v">${esc(val)}</div><div class="k">${esc(k)}</div></div>`).join("");
}

function chart(points, opts) {
  const W = 420, H = 150, L = 44, R = 10, T = 10, B = 24;
  if (!points.length) return `<svg width="${W}" height="${H}" role="img"><text x="${L}" y="${H / 2}">${esc(opts.empty || "no rounds yet")}</text></svg>`;
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  const y0 = opts.yMin !== undefined ? opts.yMin : Math.min(...ys), y1 = opts.yMax !== undefined ? opts.yMax : Math.max(...ys, y0 + 1);
  const px = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R), py = (y) => H - B - ((y - y0) / (y1 - y0 || 1)) * (H - T - B);
  const line = points.map((p) => `${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`).join(" ");
  const dots = points.map((p) => `<circle cx="${px(p[0]).toFixed(1)}" cy="${py(p[1]).toFixed(1)}" r="3" fill="${opts.color}"><title>round ${p[0]}: ${p[1]}</title></circle>`).join("");
  const fmt = opts.fmt || ((v) => String(Math.round(v)));
  return `<svg width="${W}" height="${H}" role="img" class="chart" data-points="${points.length}">
    <line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#c3c7ce"/><line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#c3c7ce"/>
    <text x="${L - 4}" y="${py(y1) + 4}" text-anchor="end">${fmt(y1)}</text><text x="${L - 4}" y="${py(y0) + 4}" text-anchor="end">${fmt(y0)}</text>
    <text x="${px(x0)}" y="${H - 8}" text-anchor="middle">${x0}</text><text x="${px(x1)}" y="${H - 8}" text-anchor="middle">${x1}</text>
    <polyline points="${line}" fill="none" stroke="${opts.color}" stroke-width="2"/>${dots}</svg>`;
}

function roundsHtml(rounds) {
  return rounds.slice().reverse().map((r) => {
    const reasons = Object.entries(r.rejected).map(([k, n]) => `${esc(k)}: ${n}`).join(", ");
    const failed = Object.entries(r.failed || {}).map(([k, n]) => `failed ${esc(k)}: ${n}`).join(", ");
    const why = [reasons, failed].filter(Boolean).join("; ");
    return `<tr data-round="${r.round}" data-status="${esc(r.status)}"><td>${r.round}</td><td class="l">${esc(r.status)}</td>
      <td>${r.selected}</td><td>${r.accepted}</td><td>${r.rejected_total}${why ? ` <span class="reasons">(${why})</span>` : ""}</td>
      <td>${r.dropped}</td><td>${r.late}</td><td>${r.prompt_chars === null ? "–" : r.prompt_chars}</td>
      <td>${num(r.val_accuracy)}</td><td>${r.duration_s === null ? "–" : r.duration_s.toFixed(2) + " s"}</td></tr>`;
  }).join("");
}

const remote = (v, c) => v.source === "run" && !c.own;

function timelineHtml(v) {
  const numbers = v.rounds.map((r) => r.round);
  const head = `<div class="timeline-head"><span class="name">client</span><span class="state">now</span><div class="cells">${
    numbers.map((n) => `<div class="cell num">${n === 1 || n % 5 === 0 ? n : ""}</div>`).join("")}</div></div>`;
  return head + v.clients.map((c) => {
    const cells = numbers.map((n) => {
      const s = c.cells[String(n)];
      return `<div class="cell${s ? " s-" + s : ""}" title="round ${n}: ${s || "not selected"}"></div>`;
    }).join("");
    return `<div class="client" data-client="${esc(c.client)}" data-state="${esc(c.state)}">
      <span class="name" title="${esc(c.client)}${remote(v, c) ? " (remote)" : ""}">${esc(c.client)}${remote(v, c) ? " ⇄" : ""}</span>
      <span class="state s-${esc(c.state)}">${esc(c.state)}</span><div class="cells">${cells}</div></div>`;
  }).join("") + (v.clients_total > v.clients.length ? `<div class="notes">${v.clients_total - v.clients.length} more clients not shown</div>` : "");
}

function diffHtml(p) {
  if (!p) return "";
  if (Array.isArray(p.diff)) {
    return p.diff.map(([op, text]) => op === "+" ? `<ins>${esc(text)}</ins>` : op === "-" ? `<del>${esc(text)}</del>` : esc(text)).join("");
  }
  return (typeof p.diff === "string" ? `<em>${esc(p.diff)}</em>\n\n` : "") + esc(p.prompt);
}

function render(v) {
  last = v;
  const h = { ...v.header, source: v.source === "watch" ? "watched over MQTT (read-only)" : "" };
  $("run-id").textContent = v.header.run || "";
  $("run-header").innerHTML = headerHtml(h);
  $("status").textContent = v.status;
  $("status").className = `badge ${v.status}`;
  $("reason").textContent = v.reason || "";
  $("counters").innerHTML = counters(v);
  const acc = v.rounds.filter((r) => typeof r.val_accuracy === "number").map((r) => [r.round, r.val_accuracy]);
  const len = v.rounds.filter((r) => typeof r.prompt_chars === "number").map((r) => [r.round, r.prompt_chars]);
  $("chart-accuracy").innerHTML = chart(acc, { yMin: 0, yMax: 1, color: "#3f7fd8", fmt: (x) => x.toFixed(2),
    empty: v.source === "watch" ? "not on the bus: the aggregator keeps its scores" : "no rounds scored yet" });
  $("duration-head").textContent = v.source === "watch" ? "wall time" : "sim time";
  $("chart-prompt").innerHTML = chart(len, { yMin: 0, color: "#e39a1c" });
  $("rounds").tBodies[0].innerHTML = roundsHtml(v.rounds);
  const states = Object.entries(v.clients_by_state).filter(([, n]) => n).map(([k, n]) => `${k} ${n}`).join(" · ");
  $("client-states").textContent = states;
  $("timeline").innerHTML = timelineHtml(v);
  const select = $("prompt-round");
  const options = v.prompts.map((p) => p.round);
  if (select.options.length !== options.length) {
    const keepLatest = chosenRound === null || !options.includes(chosenRound);
    select.innerHTML = options.map((n) => `<option value="${n}">${n === 0 ? "initial" : "round " + n}</option>`).join("");
    if (keepLatest && options.length) select.value = String(options[options.length - 1]);
    else if (chosenRound !== null) select.value = String(chosenRound);
  }
  showPrompt();
  $("notes").innerHTML = (v.header.unobservable || []).length
    ? "<b>Not observable from here:</b> " + v.header.unobservable.map(esc).join("; ") : "";
  document.body.dataset.version = String(v.version);
}

function showPrompt() {
  if (!last) return;
  const n = Number($("prompt-round").value);
  $("prompt").innerHTML = diffHtml(last.prompts.find((p) => p.round === n));
}

$("prompt-round").addEventListener("change", () => { chosenRound = Number($("prompt-round").value); showPrompt(); });
$("legend").innerHTML = CELLS.map((c) => `<span style="--c: var(--${c})">${c}</span>`).join("");

const source = new EventSource("/events");
source.onopen = () => { $("link").textContent = "live updates: connected"; };
source.onerror = () => { $("link").textContent = "live updates: disconnected (the run or the dashboard ended?)"; };
source.onmessage = (e) => render(JSON.parse(e.data));
