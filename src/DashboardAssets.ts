/**
 * The dashboard page: one HTML document, one script, one style sheet, served by DashboardServer.ts as they
 * are (no build step, no framework, nothing from a CDN, system fonts only).
 *
 * The script builds every node with DOM calls and puts every value from the server into `textContent` (or an
 * attribute it names itself): no string from the database is ever parsed as HTML, so a job whose error is
 * `<script>…</script>` shows that text. It polls the JSON API every `server.refreshMs` and redraws.
 */

export const page = String.raw`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>effect-pg-queue dashboard</title>
<link rel="stylesheet" href="/app.css">
<script src="/app.js" defer></script>
</head>
<body>
<header>
  <h1>effect-pg-queue</h1>
  <span id="schema" class="muted"></span>
  <span id="clock" class="muted"></span>
  <span id="live" class="badge">connecting…</span>
  <form id="token-box" hidden><label>token <input id="token" type="password" autocomplete="off" size="24"></label></form>
</header>
<main>
  <section id="queues-section">
    <h2>Queues <span class="muted" id="throughput-note"></span></h2>
    <table id="queues"><thead><tr>
      <th>queue</th><th class="n">ready</th><th class="n">scheduled</th><th class="n">claimed</th><th class="n">dead</th>
      <th class="n">oldest ready</th><th class="n">consumers</th><th>completed / failed per interval</th><th class="n">last interval</th>
    </tr></thead><tbody></tbody></table>
  </section>
  <section id="leadership-section">
    <h2>Leadership</h2>
    <table id="leases"><thead><tr>
      <th>lease</th><th>holder</th><th class="n">term</th><th class="n">expires in</th><th>state</th>
    </tr></thead><tbody></tbody></table>
    <p id="last-tick" class="muted"></p>
  </section>
  <section id="fleet-section">
    <h2>Fleet <span class="muted" id="fleet-summary"></span></h2>
    <table id="fleet"><thead><tr>
      <th>kind</th><th>process</th><th>host</th><th class="n">pid</th><th>queues</th><th class="n">heartbeat</th>
      <th class="n">in flight</th><th class="n">up</th>
    </tr></thead><tbody></tbody></table>
    <div class="pager" data-list="fleet"></div>
  </section>
  <section id="executions-section">
    <h2>Executions <span class="muted" id="barrier-summary"></span>
      <label class="toggle"><input type="checkbox" id="stranded-only"> stranded only</label></h2>
    <table id="barriers"><thead><tr>
      <th>execution</th><th>org</th><th>progress</th><th class="n">age</th><th class="n">last progress</th>
      <th class="n">expires in</th><th>state</th><th></th>
    </tr></thead><tbody></tbody></table>
    <div class="pager" data-list="barriers"></div>
    <h3>Recently finished</h3>
    <table id="finished"><thead><tr>
      <th>execution</th><th>status</th><th>error</th><th class="n">ended</th>
    </tr></thead><tbody></tbody></table>
    <div class="pager" data-list="finished"></div>
  </section>
  <section id="dead-section">
    <h2>Dead letters <span class="muted" id="dead-summary"></span></h2>
    <table id="dead"><thead><tr>
      <th class="n">id</th><th>queue</th><th>task</th><th class="n">attempts</th><th class="n">failed</th><th>last error</th><th></th>
    </tr></thead><tbody></tbody></table>
    <div class="pager" data-list="dead"></div>
  </section>
  <section id="detail" hidden>
    <h2><span id="detail-title"></span> <button type="button" id="detail-close">close</button></h2>
    <div id="detail-body"></div>
  </section>
  <p id="message" class="muted" role="status"></p>
</main>
</body>
</html>
`

export const style = String.raw`
:root { --fg: #1d2330; --muted: #677089; --line: #dfe3ea; --bg: #f6f7f9; --ok: #1f8a4c; --bad: #c0392b;
  --warn: #b7791f; --accent: #2f5bd3; font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: var(--bg); font-size: 14px; }
header { display: flex; gap: 16px; align-items: baseline; padding: 10px 20px; background: #fff;
  border-bottom: 1px solid var(--line); }
h1 { font-size: 18px; margin: 0; }
h2 { font-size: 15px; margin: 0 0 8px; display: flex; gap: 12px; align-items: baseline; }
h3 { font-size: 13px; margin: 14px 0 6px; }
main { padding: 12px 20px; display: grid; gap: 14px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 12px 14px; overflow-x: auto; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); vertical-align: middle; white-space: nowrap; }
th { font-weight: 600; color: var(--muted); font-size: 12px; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
td.wrap { white-space: pre-wrap; word-break: break-word; max-width: 520px; font-family: ui-monospace, monospace; font-size: 12px; }
.muted { color: var(--muted); font-size: 12px; font-weight: normal; }
.badge { font-size: 12px; padding: 1px 8px; border-radius: 10px; background: var(--line); }
.badge.ok { background: #dff3e6; color: var(--ok); }
.badge.bad { background: #fbe2df; color: var(--bad); }
.badge.warn { background: #fcf0d9; color: var(--warn); }
tr.stale td { background: #fdf1ef; }
tr.stale td.kind::after { content: " stale"; color: var(--bad); font-weight: 600; }
tr.child td.kind { padding-left: 22px; }
tr.clickable { cursor: pointer; }
tr.clickable:hover td { background: #f0f4ff; }
.bar { position: relative; width: 160px; height: 12px; background: var(--line); border-radius: 6px; overflow: hidden; display: inline-block; vertical-align: middle; }
.bar > span { position: absolute; left: 0; top: 0; bottom: 0; background: var(--accent); }
.bar.stranded > span { background: var(--bad); }
.bar-label { margin-left: 8px; font-variant-numeric: tabular-nums; }
svg.spark rect.done { fill: var(--ok); }
svg.spark rect.fail { fill: var(--bad); }
svg.spark { background: #fafbfc; border: 1px solid var(--line); vertical-align: middle; }
.pager { display: flex; gap: 8px; align-items: center; margin-top: 6px; font-size: 12px; color: var(--muted); }
button { font: inherit; font-size: 12px; padding: 2px 8px; cursor: pointer; }
pre { background: #f3f5f8; padding: 8px; border-radius: 4px; max-height: 420px; overflow: auto; white-space: pre-wrap; word-break: break-word; }
.toggle { font-size: 12px; font-weight: normal; color: var(--muted); }
`

export const script = String.raw`"use strict";
(function () {
  var state = { offsets: { fleet: 0, barriers: 0, finished: 0, dead: 0 }, limit: 20, actions: false, refreshMs: 2000,
    lastOk: 0, detail: null };
  var $ = function (id) { return document.getElementById(id); };

  // Every node is built here; text goes through textContent only.
  function el(tag, options, children) {
    var node = document.createElement(tag);
    options = options || {};
    if (options.cls) node.className = options.cls;
    if (options.text !== undefined && options.text !== null) node.textContent = String(options.text);
    if (options.title) node.title = String(options.title);
    if (options.span) node.colSpan = options.span;
    if (options.data) Object.keys(options.data).forEach(function (k) { node.dataset[k] = String(options.data[k]); });
    (children || []).forEach(function (c) { if (c) node.appendChild(c); });
    return node;
  }
  function td(text, cls, data) { return el("td", { text: text, cls: cls, data: data }); }
  function svg(tag, attrs) {
    var node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, String(attrs[k])); });
    return node;
  }

  function seconds(s) {
    if (s === null || s === undefined) return "-";
    var a = Math.abs(s), sign = s < 0 ? "-" : "";
    if (a < 60) return sign + a.toFixed(1) + "s";
    if (a < 3600) return sign + Math.floor(a / 60) + "m " + String(Math.floor(a % 60)).padStart(2, "0") + "s";
    if (a < 86400) return sign + Math.floor(a / 3600) + "h " + String(Math.floor((a % 3600) / 60)).padStart(2, "0") + "m";
    return sign + Math.floor(a / 86400) + "d " + Math.floor((a % 86400) / 3600) + "h";
  }
  function since(iso) { return seconds((Date.now() - Date.parse(iso)) / 1000); }

  function api(path, options) {
    options = options || {};
    var headers = { "accept": "application/json" };
    var token = $("token").value;
    if (options.method === "POST" && token) headers["authorization"] = "Bearer " + token;
    return fetch(path, { method: options.method || "GET", headers: headers, cache: "no-store" }).then(function (r) {
      return r.json().then(function (body) {
        if (!r.ok) throw new Error((body && body.error) || ("HTTP " + r.status));
        return body;
      });
    });
  }

  function say(text, bad) {
    var m = $("message");
    m.textContent = text;
    m.className = bad ? "badge bad" : "muted";
  }

  // ---- queues and throughput ----

  function spark(queue, intervals) {
    var w = 180, h = 30, n = Math.max(intervals.length, 1), bw = w / Math.max(n, 30);
    var points = intervals.map(function (i) { return i.queues[queue] || { completed: 0, failed: 0 }; });
    var max = points.reduce(function (m, p) { return Math.max(m, p.completed + p.failed); }, 1);
    var root = svg("svg", { "class": "spark", width: w, height: h, viewBox: "0 0 " + w + " " + h, role: "img" });
    var title = svg("title", {});
    var done = points.reduce(function (a, p) { return a + p.completed; }, 0);
    var failed = points.reduce(function (a, p) { return a + p.failed; }, 0);
    title.textContent = queue + ": " + done + " completed, " + failed + " failed over " + intervals.length + " intervals";
    root.appendChild(title);
    points.forEach(function (p, i) {
      var x = w - (points.length - i) * bw;
      var hd = (p.completed / max) * (h - 2), hf = (p.failed / max) * (h - 2);
      if (hd > 0) root.appendChild(svg("rect", { "class": "done", x: x, y: h - hd - hf, width: Math.max(bw - 1, 1), height: hd }));
      if (hf > 0) root.appendChild(svg("rect", { "class": "fail", x: x, y: h - hf, width: Math.max(bw - 1, 1), height: hf }));
    });
    return root;
  }

  function renderQueues(o) {
    var intervals = o.throughput.intervals;
    var last = intervals.length > 0 ? intervals[intervals.length - 1] : null;
    $("throughput-note").textContent = intervals.length === 0
      ? "throughput: first interval after " + o.throughput.sampleSeconds + "s"
      : "throughput: " + intervals.length + " intervals of ~" + o.throughput.sampleSeconds + "s (green completed, red dead-lettered)";
    var rows = o.queues.map(function (q) {
      var flow = last && last.queues[q.queue] ? last.queues[q.queue] : { completed: 0, failed: 0 };
      var d = function (col) { return { queue: q.queue, col: col }; };
      return el("tr", { data: { queue: q.queue } }, [
        td(q.queue, null, d("queue")), td(q.ready, "n", d("ready")), td(q.scheduled, "n", d("scheduled")),
        td(q.claimed, "n", d("claimed")), td(q.deadLettered, "n", d("dead")), td(seconds(q.oldestReadySeconds), "n", d("oldest")),
        td(q.consumers, "n", d("consumers")), el("td", {}, [spark(q.queue, intervals)]),
        td(last ? flow.completed + " / " + flow.failed : "-", "n", d("last"))
      ]);
    });
    if (rows.length === 0) rows = [el("tr", {}, [el("td", { text: "no queues yet", cls: "muted", span: 9 })])];
    $("queues").tBodies[0].replaceChildren.apply($("queues").tBodies[0], rows);
  }

  // ---- leadership ----

  function renderLeadership(o) {
    var rows = o.leases.map(function (l) {
      return el("tr", {}, [td(l.name), td(l.holder || "(free)"), td(l.term, "n"), td(seconds(l.expiresInSeconds), "n"),
        el("td", {}, [el("span", { cls: l.held ? "badge ok" : "badge warn", text: l.held ? "held" : "free / expired" })])]);
    });
    if (rows.length === 0) rows = [el("tr", {}, [el("td", { text: "no lease row yet (no reaper has run)", cls: "muted", span: 9 })])];
    $("leases").tBodies[0].replaceChildren.apply($("leases").tBodies[0], rows);
    var p = $("last-tick");
    if (!o.reaper) { p.textContent = "Last tick: known to the reaper that serves this page (PGQ_DASHBOARD_PORT)."; return; }
    var l = o.reaper.leadership, t = o.reaper.lastTick;
    var me = "this reaper " + (l.isLeader ? "leads (term " + l.term + ")" : "stands by") + ", " + l.acquisitions + " acquisition(s), " + l.losses + " loss(es). ";
    p.textContent = me + (t === null ? "No tick yet." : "Last tick (term " + t.term + "): re-armed " + t.rearmed + ", promoted " + t.promoted +
      ", pruned " + t.pruned + " process(es) freeing " + t.released + " claim(s), recovered " + t.recovered + ", healed " + t.healed +
      " barrier(s), swept " + t.swept + " dead letter(s)" + (t.failures.length > 0 ? "; failed: " + t.failures.join(", ") : "") + ".");
  }

  // ---- fleet ----

  function renderFleet(o, page) {
    var f = o.fleet;
    $("fleet-summary").textContent = f.total + " process(es): " + Object.keys(f.byKind).sort().map(function (k) { return f.byKind[k] + " " + k; }).join(", ") +
      (f.stale > 0 ? "; " + f.stale + " stale" : "");
    var rows = page.rows.map(function (p) {
      var cls = (p.stale ? "stale " : "") + (p.supervisor ? "child" : "");
      return el("tr", { cls: cls, data: { process: p.processId } }, [
        td((p.supervisor ? "└ " : "") + p.kind, "kind"), td(p.processId, null), td(p.host), td(p.pid, "n"), td(p.queues.join(", ")),
        td(seconds(p.heartbeatAgeSeconds) + " ago", "n"), td(p.inFlight, "n"), td(since(p.startedAt), "n")]);
    });
    if (rows.length === 0) rows = [el("tr", {}, [el("td", { text: "no registered process", cls: "muted", span: 9 })])];
    $("fleet").tBodies[0].replaceChildren.apply($("fleet").tBodies[0], rows);
    pager("fleet", page.rows.length, f.total);
  }

  // ---- executions ----

  function progress(b) {
    var done = b.total - b.remaining, pct = b.total > 0 ? Math.max(0, Math.min(100, (100 * done) / b.total)) : 0;
    var bar = el("span", { cls: "bar" + (b.stranded ? " stranded" : "") }, [el("span")]);
    bar.firstChild.style.width = pct + "%";
    return el("td", {}, [bar, el("span", { cls: "bar-label", text: done + " / " + b.total })]);
  }

  function renderBarriers(o, page) {
    var b = o.barriers;
    $("barrier-summary").textContent = b.live + (b.capped ? "+" : "") + " live, " + b.stranded + " stranded";
    var rows = page.rows.map(function (x) {
      var stop = state.actions ? el("button", { text: "stop", data: { action: "stop", execution: x.executionId } }) : null;
      var row = el("tr", { cls: "clickable", data: { execution: x.executionId } }, [
        td(x.executionId), td(x.orgId || "-"), progress(x), td(seconds(x.ageSeconds), "n"), td(seconds(x.idleSeconds) + " ago", "n"),
        td(seconds(x.expiresInSeconds), "n"),
        el("td", {}, [el("span", { cls: x.stranded ? "badge bad" : "badge ok", text: x.stranded ? "STRANDED" : "running" })]),
        el("td", {}, [stop])]);
      row.addEventListener("click", function (e) {
        if (e.target && e.target.dataset && e.target.dataset.action === "stop") return stopExecution(x.executionId);
        showExecution(x.executionId);
      });
      return row;
    });
    if (rows.length === 0) rows = [el("tr", {}, [el("td", { text: page.stranded ? "no stranded barrier" : "no live barrier", cls: "muted", span: 9 })])];
    $("barriers").tBodies[0].replaceChildren.apply($("barriers").tBodies[0], rows);
    pager("barriers", page.rows.length, page.stranded ? b.stranded : b.live);
  }

  function renderFinished(page) {
    var rows = page.rows.map(function (x) {
      var badge = x.status === "COMPLETED" ? "badge ok" : x.status === "ERROR" ? "badge bad" : "badge warn";
      var row = el("tr", { cls: "clickable" }, [td(x.executionId),
        el("td", {}, [el("span", { cls: badge, text: x.status }), x.recovered ? el("span", { cls: "muted", text: " recovered by the reaper" }) : null]),
        td(x.errorMessage || "", "wrap"), td(since(x.updatedAt) + " ago", "n")]);
      row.addEventListener("click", function () { showExecution(x.executionId); });
      return row;
    });
    if (rows.length === 0) rows = [el("tr", {}, [el("td", { text: page.note || "none yet", cls: "muted", span: 9 })])];
    $("finished").tBodies[0].replaceChildren.apply($("finished").tBodies[0], rows);
    pager("finished", page.rows.length, null);
  }

  // ---- dead letters ----

  function renderDead(o, page) {
    $("dead-summary").textContent = o.deadLetters.total + (o.deadLetters.capped ? "+" : "") + " in all, newest first";
    var rows = page.rows.map(function (d) {
      var replay = state.actions ? el("button", { text: "replay", data: { action: "replay" } }) : null;
      var row = el("tr", { cls: "clickable", data: { dead: d.msgId } }, [
        td(d.msgId, "n"), td(d.queue), td(d.task), td(d.attempts + " / " + d.maxAttempts, "n"), td(since(d.failedAt) + " ago", "n"),
        td(d.lastError + (d.errorTruncated ? " …" : ""), "wrap", { col: "error" }), el("td", {}, [replay])]);
      row.addEventListener("click", function (e) {
        if (e.target && e.target.dataset && e.target.dataset.action === "replay") return replayDead(d.msgId);
        showDead(d.msgId);
      });
      return row;
    });
    if (rows.length === 0) rows = [el("tr", {}, [el("td", { text: "no dead letters", cls: "muted", span: 9 })])];
    $("dead").tBodies[0].replaceChildren.apply($("dead").tBodies[0], rows);
    pager("dead", page.rows.length, o.deadLetters.total);
  }

  // ---- detail panel ----

  function field(name, value) { return el("tr", {}, [el("th", { text: name }), td(value === null || value === undefined ? "-" : value, "wrap")]); }

  function openDetail(title, nodes) {
    $("detail-title").textContent = title;
    $("detail-body").replaceChildren.apply($("detail-body"), nodes);
    $("detail").hidden = false;
    $("detail").scrollIntoView({ block: "nearest" });
  }

  function showDead(id) {
    state.detail = { kind: "dead", id: id };
    api("/api/dead-letters/" + encodeURIComponent(id)).then(function (d) {
      openDetail("Dead letter " + d.msgId, [
        el("table", {}, [field("queue", d.queue), field("task", d.task), field("org", d.orgId || "-"),
          field("attempts", d.attempts + " / " + d.maxAttempts), field("priority", d.priority),
          field("execution", d.executionId === null ? "-" : d.executionId + " batch " + (d.batchIndex === null ? "callback" : d.batchIndex)),
          field("enqueued", d.enqueuedAt), field("failed", d.failedAt)]),
        el("h3", { text: "Last error" }), el("pre", { text: d.lastError, data: { detail: "error" } }),
        el("h3", { text: "Payload" + (d.payloadTruncated ? " (cut short)" : "") }), el("pre", { text: d.payload, data: { detail: "payload" } })
      ]);
    }).catch(function (e) { say(e.message, true); });
  }

  function showExecution(id) {
    state.detail = { kind: "execution", id: id };
    api("/api/executions/" + encodeURIComponent(id)).then(function (v) {
      var status = v.status._tag === "Found" ? v.status.status : v.status._tag;
      var b = v.batches;
      openDetail("Execution " + v.executionId, [
        el("table", {}, [field("org", v.orgId || "-"), field("status", status),
          field("barrier", v.barrier === null ? "none (ended, or never started)" : (v.barrier.total - v.barrier.remaining) + " of " + v.barrier.total + " counted"),
          field("batches", b.done + " done, ready " + b.ready + ", scheduled " + b.scheduled + ", running " + b.claimed + ", dead-lettered " + b.deadLettered),
          field("callback", v.callback === null ? "-" : v.callback.state + " (job " + v.callback.msgId + ")")]),
        el("h3", { text: "Dead letters of this execution" }),
        el("pre", { text: v.deadLetters.length === 0 ? "none" : v.deadLetters.map(function (d) {
          return d.msgId + "  " + (d.batchIndex === null ? "callback" : "batch " + d.batchIndex) + "  " + d.task + "  " + d.lastError;
        }).join("\n") })
      ]);
    }).catch(function (e) { say(e.message, true); });
  }

  // ---- actions ----

  function act(path, done) {
    if (!$("token").value) { say("enter the dashboard token first", true); return; }
    api(path, { method: "POST" }).then(function (r) { say(done(r), false); refresh(); }).catch(function (e) { say(e.message, true); });
  }
  function replayDead(id) { act("/api/dead-letters/" + encodeURIComponent(id) + "/replay", function (r) { return "replayed " + r.replayed + " dead letter(s)"; }); }
  function stopExecution(id) {
    if (!window.confirm("Stop execution " + id + "?")) return;
    act("/api/executions/" + encodeURIComponent(id) + "/stop", function (r) { return "execution " + r.executionId + ": " + r.outcome; });
  }

  // ---- paging and polling ----

  function pager(list, shown, total) {
    var box = document.querySelector('.pager[data-list="' + list + '"]');
    var offset = state.offsets[list];
    var prev = el("button", { text: "‹ newer" }), next = el("button", { text: "older ›" });
    prev.disabled = offset === 0;
    next.disabled = shown < state.limit || (total !== null && offset + shown >= total);
    prev.addEventListener("click", function () { state.offsets[list] = Math.max(0, offset - state.limit); refresh(); });
    next.addEventListener("click", function () { state.offsets[list] = offset + state.limit; refresh(); });
    var label = shown === 0 ? "" : (offset + 1) + "–" + (offset + shown) + (total === null ? "" : " of " + total);
    box.replaceChildren(prev, el("span", { text: label }), next);
  }

  function page(path, list, extra) {
    return api(path + "?offset=" + state.offsets[list] + "&limit=" + state.limit + (extra || ""));
  }

  var timer = null;
  function refresh() {
    if (timer !== null) { clearTimeout(timer); timer = null; }
    var stranded = $("stranded-only").checked;
    return Promise.all([
      api("/api/overview"), page("/api/processes", "fleet"), page("/api/barriers", "barriers", "&stranded=" + stranded),
      page("/api/executions/finished", "finished"), page("/api/dead-letters", "dead")
    ]).then(function (r) {
      var o = r[0];
      state.actions = o.server.actions;
      state.refreshMs = o.server.refreshMs;
      $("token-box").hidden = !state.actions;
      $("schema").textContent = "schema " + o.schema;
      $("clock").textContent = "database time " + new Date(o.now).toISOString().replace("T", " ").slice(0, 19) + " UTC";
      renderQueues(o); renderLeadership(o); renderFleet(o, r[1]); renderBarriers(o, r[2]); renderFinished(r[3]); renderDead(o, r[4]);
      state.lastOk = Date.now();
      $("live").textContent = "live";
      $("live").className = "badge ok";
    }).catch(function (e) {
      $("live").textContent = "offline: " + e.message + (state.lastOk ? " (last update " + since(new Date(state.lastOk).toISOString()) + " ago)" : "");
      $("live").className = "badge bad";
    }).then(function () { timer = setTimeout(refresh, state.refreshMs); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    $("token-box").addEventListener("submit", function (e) { e.preventDefault(); });
    $("detail-close").addEventListener("click", function () { $("detail").hidden = true; state.detail = null; });
    $("stranded-only").addEventListener("change", function () { state.offsets.barriers = 0; refresh(); });
    refresh();
  });
})();
`
