// scaleset dashboard: hash routes, one live view stream (server-sent events) per page, actions
// through the ARM API with the session's CSRF token. No dependencies, no build step.
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const SUB = "00000000-0000-0000-0000-000000000000";
const COMPUTE = "2024-11-01";
const MAX_LOG_LINES = 5000; // lines kept in the page; older ones are dropped

let stream = null;   // the view's EventSource
let logStream = null; // a run's log EventSource
let journalAbort = null; // aborts an instance journal being followed
let renderFn = null; // renders the current view's data

// h("tag.class#id", {attr}, children...) builds elements; text is always text, never HTML.
function h(spec, attrs, ...kids) {
  const [tag, ...rest] = spec.split(/(?=[.#])/);
  const el = document.createElement(tag || "div");
  for (const r of rest) {
    if (r[0] === ".") el.classList.add(r.slice(1));
    else el.id = r.slice(1);
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const k of kids.flat()) {
    if (k === null || k === undefined || k === false) continue;
    el.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return el;
}

function toast(msg, bad) {
  const t = document.getElementById("toast");
  t.textContent = msg;
  t.className = bad ? "bad show" : "show";
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.className = ""), 5000);
}

async function call(method, path, body) {
  const r = await fetch(path, {
    method,
    headers: { "X-CSRF-Token": CSRF, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let v = null;
  try { v = text ? JSON.parse(text) : null; } catch (_) { v = text; }
  if (!r.ok) {
    const m = (v && v.error && v.error.message) || `HTTP ${r.status}`;
    toast(m, true);
    throw new Error(m);
  }
  return v;
}

const vmssPath = (rg, name) =>
  `/ui/api/arm/subscriptions/${SUB}/resourceGroups/${encodeURIComponent(rg)}/providers/Microsoft.Compute/virtualMachineScaleSets/${encodeURIComponent(name)}`;
const arm = (path, method, body) =>
  call(method || "POST", `${path}${path.includes("?") ? "&" : "?"}api-version=${COMPUTE}`, body);

function setLive(on) {
  const l = document.getElementById("live");
  l.textContent = on ? "● live" : "○ reconnecting";
  l.className = on ? "live on" : "live";
}

function closeStreams() {
  if (stream) stream.close();
  if (logStream) logStream.close();
  stream = logStream = null;
  stopJournal();
}

function stopJournal() {
  if (journalAbort) journalAbort.abort();
  journalAbort = null;
}

// Opens the view's stream: every event is the view's whole data, rendered in place.
function watch(query, render) {
  renderFn = render;
  stream = new EventSource(`/ui/events?${query}`);
  stream.onopen = () => setLive(true);
  stream.onerror = () => setLive(false);
  stream.addEventListener("view", (e) => {
    const main = document.getElementById("main");
    main.dataset.events = String(Number(main.dataset.events || 0) + 1);
    const v = JSON.parse(e.data);
    if (v.error) {
      main.replaceChildren(h("p.error", {}, v.error.message));
      return;
    }
    renderFn(v);
  });
}

function stateClass(s) {
  s = String(s || "").toLowerCase();
  if (/(succeeded|healthy|running|completed|hosted)/.test(s)) return "ok";
  if (/(failed|faulted|unhealthy|canceled|cancelled|not answering)/.test(s)) return "bad";
  return "warn";
}
const badge = (s) => h("span.badge." + stateClass(s), {}, s === null || s === undefined ? "—" : String(s));

// Puts a freshly rendered table into `box`, changing only the cells whose content changed when
// the rows are the same ones: a button or checkbox that did not change stays the same element,
// so a click that spans a refresh is not lost.
function patchInto(box, fresh) {
  const old = box.firstElementChild;
  const ids = (t) => [...t.querySelectorAll("tbody tr")].map((r) => r.dataset.id).join("\n");
  if (!old || old.id !== fresh.id || ids(old) !== ids(fresh)) {
    box.replaceChildren(fresh);
    return;
  }
  const oldCells = old.querySelectorAll("tbody td");
  fresh.querySelectorAll("tbody td").forEach((td, i) => {
    if (oldCells[i].innerHTML !== td.innerHTML) oldCells[i].replaceChildren(...td.childNodes);
  });
}

function table(id, cols, rows) {
  return h("table#" + id, {},
    h("thead", {}, h("tr", {}, cols.map((c) => h("th", {}, c[0])))),
    h("tbody", {}, rows.map((r) => h("tr", { "data-id": r.instanceId || r.id || r.name }, cols.map((c) => h("td", {}, c[1](r)))))));
}

// ---- resource group ----
function overview(rg) {
  const main = document.getElementById("main");
  watch(`view=overview${rg ? "&rg=" + encodeURIComponent(rg) : ""}`, (v) => {
    const link = (r) => {
      if (r.kind === "Scale set") return h("a", { href: `#/vmss/${encodeURIComponent(v.group)}/${encodeURIComponent(r.name)}` }, r.name);
      if (r.kind === "Pipeline") return h("a", { href: `#/runs/${encodeURIComponent(r.name)}` }, r.name);
      if (r.kind === "Image") return h("a", { href: "#/images" }, r.name);
      return r.name;
    };
    main.replaceChildren(
      h("h1", {}, "Resource group ", v.group || "(none)"),
      h("p.groups", {}, "Groups: ", v.groups.map((g) => h("a", { href: `#/rg/${encodeURIComponent(g)}` }, g, " "))),
      table("resources", [
        ["Name", link], ["Type", (r) => r.kind], ["State", (r) => badge(r.state)], ["Details", (r) => r.detail],
      ], v.resources));
  });
}

// ---- scale set ----
function mib(b) { return b === null || b === undefined ? "—" : (b / 1048576).toFixed(0) + " MiB"; }
function num(x, unit) { return x === null || x === undefined ? "—" : `${x}${unit || ""}`; }

function vmssView(rg, name) {
  const main = document.getElementById("main");
  const path = vmssPath(rg, name);
  const act = (what, method, body, sub) => () =>
    arm(sub ? `${path}/${sub}` : path, method, body).then(() => toast(`${what}: accepted`));
  const selected = () => [...document.querySelectorAll("#instances input[type=checkbox]:checked")].map((c) => c.value);
  const onInstances = (what, sub) => () => {
    const ids = selected();
    arm(`${path}/${sub}`, "POST", ids.length ? { instanceIds: ids } : {}).then(() =>
      toast(`${what} ${ids.length ? "instances " + ids.join(", ") : "all instances"}: accepted`));
  };
  let built = false;
  watch(`view=vmss&rg=${encodeURIComponent(rg)}&name=${encodeURIComponent(name)}`, (v) => {
    const p = v.vmss.properties || {};
    const policy = (p.upgradePolicy || {}).mode || "Manual";
    if (!built) {
      built = true;
      const cap = h("input#capacity", { type: "number", min: 0, max: 1000, value: (v.vmss.sku || {}).capacity });
      main.replaceChildren(
        h("h1", {}, "Scale set ", name, " ", h("small", {}, "in ", h("a", { href: `#/rg/${encodeURIComponent(rg)}` }, rg))),
        h("section#model"),
        h("section.actions", {},
          h("label", {}, "Capacity ", cap),
          h("button#btn-scale", { onclick: () => arm(path, "PATCH", { sku: { capacity: Number(cap.value) } }).then(() => toast(`scaling to ${cap.value}`)) }, "Scale"),
          h("button#btn-restart", { onclick: onInstances("restart", "restart") }, "Restart"),
          h("button#btn-reimage", { onclick: onInstances("reimage", "reimage") }, "Reimage"),
          h("button#btn-rolling-start", { onclick: act("rolling upgrade", "POST", {}, "osRollingUpgrade") }, "Start rolling upgrade"),
          h("button#btn-rolling-cancel", { onclick: act("cancel", "POST", {}, "rollingUpgrades/cancel") }, "Cancel rolling upgrade"),
          h("button#btn-rollback", { onclick: act("roll back", "POST", {}, "rollback") }, "Roll back")),
        h("section#rolling"),
        h("h2", {}, "Instances"),
        h("section#instances-box"),
        h("section#instance-log"));
    }
    document.getElementById("model").replaceChildren(
      h("dl", {},
        h("dt", {}, "State"), h("dd", {}, badge(p.provisioningState)),
        h("dt", {}, "Capacity"), h("dd#cap-now", {}, String((v.vmss.sku || {}).capacity), " × ", (v.vmss.sku || {}).name || ""),
        h("dt", {}, "Image"), h("dd#model-image", {}, v.image),
        h("dt", {}, "Upgrade policy"), h("dd", {}, policy),
        h("dt", {}, "Load balancers"), h("dd", {}, v.loadBalancers.map((l) => `${l.name}: ${l.requests} requests, ${l.failed} failed`).join("; ") || "—")));
    rollingBox(v.rolling);
    const sel = new Set(selected());
    patchInto(document.getElementById("instances-box"), table("instances", [
      ["", (r) => h("input", { type: "checkbox", value: r.instanceId, checked: sel.has(r.instanceId) })],
      ["Id", (r) => r.instanceId], ["Name", (r) => r.name], ["IP", (r) => r.ip], ["Image", (r) => r.image],
      ["Latest model", (r) => (r.latestModelApplied ? "Yes" : "No")],
      ["Power", (r) => badge(r.powerState)], ["Health", (r) => badge(r.health)],
      ["Provisioning", (r) => r.provisioningState],
      ["Requests/s", (r) => num(r.requestsPerSecond)], ["CPU", (r) => num(r.cpuPercent, " %")],
      ["Available memory", (r) => mib(r.availableMemoryBytes)],
      ["Logs", (r) => h("span", {},
        h("button.small", { "data-journal": r.instanceId, onclick: () => showJournal(path, r.instanceId) }, "Journal"),
        h("button.small", { "data-bootlog": r.instanceId, onclick: () => showBootLog(path, r.instanceId) }, "Boot log"))],
    ], v.instances));
  });
}

// ---- an instance's journal and boot log (scaleset's text routes on the ARM API) ----
function instanceLogBox(title) {
  stopJournal();
  const box = document.getElementById("instance-log");
  const pre = h("pre#instance-log-text.log", {});
  box.replaceChildren(h("h2", {}, title), h("div.actions#instance-log-controls"), pre);
  return pre;
}

// Appends text, keeping the newest MAX_LOG_LINES lines.
function appendText(pre, text) {
  pre.textContent += text;
  const lines = pre.textContent.split("\n");
  if (lines.length > MAX_LOG_LINES) pre.textContent = lines.slice(-MAX_LOG_LINES).join("\n");
  pre.scrollTop = pre.scrollHeight;
}

// GETs a text route and streams its body into `pre` (a followed journal never ends).
async function streamText(url, pre, signal) {
  const r = await fetch(url, { signal });
  if (!r.ok) {
    const t = await r.text();
    let m = `HTTP ${r.status}`;
    try { m = JSON.parse(t).error.message || m; } catch (_) { /* not JSON */ }
    toast(m, true);
    pre.textContent = m;
    return;
  }
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    // A read that finished just before an abort must not land in the next view's text.
    if (signal && signal.aborted) return;
    if (done) break;
    appendText(pre, dec.decode(value, { stream: true }));
  }
  appendText(pre, dec.decode());
}

function showJournal(path, id) {
  const pre = instanceLogBox(`Instance ${id}: journal`);
  const unit = h("input#journal-unit", { placeholder: "unit, e.g. nginx" });
  const follow = h("input#journal-follow", { type: "checkbox" });
  const load = () => {
    stopJournal();
    pre.textContent = "";
    journalAbort = new AbortController();
    const q = new URLSearchParams({ "api-version": COMPUTE, lines: "200" });
    if (unit.value.trim()) q.set("unit", unit.value.trim());
    if (follow.checked) q.set("follow", "true");
    streamText(`${path}/virtualMachines/${encodeURIComponent(id)}/journal?${q}`, pre, journalAbort.signal)
      .catch((e) => { if (e.name !== "AbortError") toast(String(e), true); });
  };
  document.getElementById("instance-log-controls").replaceChildren(
    h("label", {}, "Unit ", unit), h("label", {}, follow, " Follow"),
    h("button#btn-journal-load", { onclick: load }, "Show"),
    h("button", { onclick: () => { stopJournal(); document.getElementById("instance-log").replaceChildren(); } }, "Close"));
  load();
}

function showBootLog(path, id) {
  const pre = instanceLogBox(`Instance ${id}: boot diagnostics (console log)`);
  document.getElementById("instance-log-controls").replaceChildren(
    h("button", { onclick: () => showBootLog(path, id) }, "Refresh"),
    h("button", { onclick: () => document.getElementById("instance-log").replaceChildren() }, "Close"));
  journalAbort = new AbortController();
  streamText(`${path}/virtualMachines/${encodeURIComponent(id)}/serialConsoleLog?api-version=${COMPUTE}`, pre, journalAbort.signal)
    .catch((e) => { if (e.name !== "AbortError") toast(String(e), true); });
}

function rollingBox(r) {
  const box = document.getElementById("rolling");
  if (!r) {
    box.replaceChildren(h("h2", {}, "Rolling upgrade"), h("p#rolling-status", {}, "No rolling upgrade yet."));
    return;
  }
  const p = r.properties, pr = p.progress, rs = p.runningStatus, rc = p.receipt || {};
  const total = pr.successfulInstanceCount + pr.failedInstanceCount + pr.inProgressInstanceCount + pr.pendingInstanceCount;
  const bar = h("div.bar", {});
  for (const [k, cls] of [["successfulInstanceCount", "ok"], ["failedInstanceCount", "bad"], ["inProgressInstanceCount", "warn"]]) {
    const seg = h("span." + cls, {});
    seg.style.width = total ? `${(100 * pr[k]) / total}%` : "0";
    bar.append(seg);
  }
  box.replaceChildren(...[
    h("h2", {}, "Rolling upgrade"),
    h("p#rolling-status", {}, badge(rs.code), ` since ${rs.startTime} · last action ${rs.lastAction} at ${rs.lastActionTime}`),
    bar,
    h("p#rolling-progress", {},
      `successful ${pr.successfulInstanceCount} · in progress ${pr.inProgressInstanceCount} · failed ${pr.failedInstanceCount} · pending ${pr.pendingInstanceCount}`),
    p.error ? h("p.error#rolling-error", {}, `${p.error.code}: ${p.error.message}`) : null,
    // A failed unit's detail: the instance and unit, and the last lines of its journal.
    ...((p.error && p.error.details) || []).map((d) =>
      h("div.unit-failed", {}, h("p.error", {}, `${d.code}: ${d.target}`), h("pre.log", {}, d.message))),
    h("p#receipt", {}, `Deploy receipt: model ${rc.previousModelVersion} → ${rc.targetModelVersion}; ${rc.requests} requests, ${rc.non2xxResponses} non-2xx, ${rc.failedRequests} failed; per image: `,
      Object.entries(rc.requestsPerImage || {}).map(([k, n]) => `${k}: ${n}`).join(", ") || "—"),
  ].filter(Boolean));
}

// ---- pipelines and runs ----
// A run's trigger: `{"push": {...}}` → "push", "manual" as it is.
const trigger = (r) => (typeof r.reason === "string" ? r.reason : Object.keys(r.reason || {})[0] || "");

function dur(a, b) {
  if (!a) return "";
  const s = Math.round(((b || Date.now()) - a) / 1000);
  return s >= 60 ? `${Math.floor(s / 60)}m ${s % 60}s` : `${s}s`;
}

function runsView(pipeline) {
  const main = document.getElementById("main");
  watch(`view=runs${pipeline ? "&pipeline=" + encodeURIComponent(pipeline) : ""}`, (v) => {
    main.replaceChildren(
      h("h1", {}, pipeline ? `Pipeline ${pipeline}` : "Pipelines"),
      table("pipelines", [
        ["Pipeline", (d) => h("a", { href: `#/runs/${encodeURIComponent(d.name)}` }, d.name)],
        ["Repository", (d) => d.repository], ["Last result", (d) => badge(d.lastResult || "never run")],
        ["", (d) => h("button.run", { onclick: () => call("POST", `/ui/api/ci/pipelines/${encodeURIComponent(d.name)}/runs`, {}).then((r) => (location.hash = `#/run/${r.id}`)) }, "Run")],
      ], v.pipelines),
      h("h2", {}, "Runs"),
      table("runs", [
        ["Run", (r) => h("a", { href: `#/run/${r.id}` }, `#${r.id}`)], ["Pipeline", (r) => r.pipeline],
        ["Trigger", trigger],
        ["Branch", (r) => (r.source_branch || "").replace("refs/heads/", "")],
        ["Commit", (r) => (r.source_version || "").slice(0, 10)],
        ["Result", (r) => badge(r.state)], ["Duration", (r) => dur(r.started_ms, r.finished_ms)],
      ], v.runs));
  });
}

function runView(id) {
  const main = document.getElementById("main");
  const log = h("pre#log", {});
  let built = false;
  watch(`view=run&id=${id}`, (v) => {
    const r = v.run;
    if (!built) {
      built = true;
      main.replaceChildren(
        h("h1", {}, `Run #${r.id} `, h("small", {}, h("a", { href: `#/runs/${encodeURIComponent(r.pipeline)}` }, r.pipeline))),
        h("section#run-summary"),
        h("section.actions", {},
          h("button#btn-rerun", { onclick: () => call("POST", `/ui/api/ci/pipelines/${encodeURIComponent(r.pipeline)}/runs`, { branch: (r.source_branch || "").replace("refs/heads/", "") }).then((n) => (location.hash = `#/run/${n.id}`)) }, "Run again"),
          h("button#btn-cancel", { onclick: () => call("POST", `/ui/api/ci/runs/${r.id}/cancel`).then(() => toast("cancel requested")) }, "Cancel")),
        h("div.cols", {}, h("section#tree"), h("section.logbox", {}, h("h2", {}, "Log ", h("span#log-state", {}, "streaming")), log)));
      followLog(id, log);
    }
    document.getElementById("run-summary").replaceChildren(h("p", {}, badge(r.state),
      ` ${trigger(r)} · ${(r.source_branch || "").replace("refs/heads/", "")} @ ${(r.source_version || "").slice(0, 10)} · queued ${r.queued} · ${dur(r.started_ms, r.finished_ms)}`,
      r.message ? h("span.error", {}, " ", r.message) : null));
    document.getElementById("tree").replaceChildren(h("h2", {}, "Stages, jobs, steps"), runTree(r));
  });
}

// A run's stages → jobs → steps, each with its result and duration.
function runTree(r) {
  const item = (cls, x, name, kids) =>
    h("li" + cls, {}, badge(x.result || x.status), " ", name, " ", h("span.dur", {}, dur(x.started_ms, x.finished_ms)), kids);
  const steps = (j) => h("ul", {}, (j.steps || []).map((st) => item(".step", st, st.label)));
  const jobs = (s) => h("ul", {}, (s.jobs || []).map((j) => item(".job", j, j.display_name || j.name, steps(j))));
  return h("ul.tree", {}, (r.stages || []).map((s) => item(".stage", s, s.display_name || s.name, jobs(s))));
}

function followLog(id, log) {
  logStream = new EventSource(`/ui/events/log?run=${id}`);
  logStream.addEventListener("line", (e) => {
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    const cls = e.data.startsWith("##[error]") ? "line error" : e.data.startsWith("##[section]") ? "line section" : "line";
    log.append(h("span", { class: cls }, e.data + "\n"));
    while (log.childElementCount > MAX_LOG_LINES) log.firstChild.remove();
    if (atBottom) log.scrollTop = log.scrollHeight;
  });
  logStream.addEventListener("end", () => {
    document.getElementById("log-state").textContent = "complete";
    logStream.close();
  });
}

// ---- images ----
function imagesView() {
  const main = document.getElementById("main");
  watch("view=images", (v) => {
    main.replaceChildren(h("h1", {}, "Images"), table("images", [
      ["Name", (i) => i.name], ["Created", (i) => i.created],
      ["Lineage", (i) => h("ol.lineage", {}, i.lineage.map((l) => h("li." + l.kind, { title: l.name }, `${l.kind}: ${l.name.startsWith("sha256:") || l.kind === "build" ? l.name.replace("sha256:", "").slice(0, 12) : l.name}`)))],
      ["Made by", (i) => (i.madeBy ? h("span", {}, h("a", { href: `#/run/${i.madeBy.run}` }, `run #${i.madeBy.run}`), ` (${i.madeBy.pipeline}) from commit ${String(i.madeBy.commit).slice(0, 10)}`) : "—")],
      ["Used by", (i) => i.usedBy.join(", ") || "—"],
    ], v.images));
  });
}

function route() {
  closeStreams();
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  switch (parts[0]) {
    case "vmss": return vmssView(parts[1], parts[2]);
    case "runs": return runsView(parts[1]);
    case "run": return runView(Number(parts[1]));
    case "images": return imagesView();
    case "rg": return overview(parts[1]);
    default: return overview();
  }
}

document.getElementById("logout").addEventListener("click", () =>
  call("POST", "/ui/logout").then(() => location.replace("/")));
window.addEventListener("hashchange", route);
route();
