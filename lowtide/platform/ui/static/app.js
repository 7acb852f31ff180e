// lowtide dashboard: reads the control-plane API with the session cookie, redraws every
// second or two. Plain browser JavaScript (no build step); charts by the vendored uPlot.
"use strict";
(function () {
  const body = document.body;
  const PAGE = body.dataset.page;
  const NAME = body.dataset.name;
  const CSRF = document.querySelector('meta[name="lowtide-csrf"]').content;
  const main = document.getElementById("main");
  const live = document.getElementById("live");
  let lastOk = 0;

  // ---- helpers ---------------------------------------------------------------------
  const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g,
    (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  const num = (v, d = 1) => v == null || isNaN(v) ? "–" : (v = +v, (Math.abs(v) >= 100 ? Math.round(v) : +v.toFixed(d)).toString());
  const ms = (v) => v == null ? "–" : v < 1 ? v.toFixed(2) + " ms" : v < 1000 ? num(v) + " ms" : num(v / 1000, 2) + " s";
  const dur = (s) => s == null ? "–" : s < 60 ? num(s) + " s" : s < 3600 ? num(s / 60) + " min" : num(s / 3600) + " h";
  const bytes = (b) => b == null ? "–" : b >= 2 ** 30 ? num(b / 2 ** 30) + " GiB" : num(b / 2 ** 20) + " MiB";
  const pct = (f) => f == null ? "–" : Math.round(f * 100) + " %";
  const clockShort = (t) => new Date(t * 1000).toLocaleTimeString([], {hour12: false, hour: "2-digit", minute: "2-digit"});
  const clock = (t) => new Date(t * 1000).toLocaleTimeString([], {hour12: false});
  const badge = (state, why) => `<span class="badge ${esc(state)}" title="${esc(why)}">${esc(state)}</span>`;

  async function api(path, opts) {
    const resp = await fetch(path, Object.assign({credentials: "same-origin"}, opts || {}));
    if (resp.status === 401) { location.reload(); throw new Error("signed out"); }
    if (!resp.ok) {
      const err = await resp.json().catch(() => ({}));
      throw Object.assign(new Error(err.detail || resp.statusText), {status: resp.status});
    }
    lastOk = Date.now();
    return resp.json();
  }

  function every(ms, fn) {
    let busy = false;
    const tick = async () => {
      if (busy) return;
      busy = true;
      try { await fn(); } catch (e) { if (e.status === 404) throw e; } finally { busy = false; }
    };
    tick();
    return setInterval(tick, ms);
  }

  setInterval(() => {
    const age = (Date.now() - lastOk) / 1000;
    live.className = "live" + (lastOk === 0 || age > 10 ? " down" : age > 4 ? " stale" : "");
    live.textContent = lastOk === 0 ? "connecting…" : age > 10 ? "disconnected" : "live · " + age.toFixed(0) + " s ago";
  }, 500);

  document.getElementById("logout").addEventListener("click", async () => {
    await fetch("/ui/logout", {method: "POST", credentials: "same-origin", headers: {"X-Lowtide-CSRF": CSRF}});
    location.href = "/ui/";
  });
  document.querySelectorAll("nav a").forEach((a) => {
    if (a.dataset.nav === PAGE || (PAGE === "endpoint" && a.dataset.nav === "endpoints")) a.classList.add("on");
  });

  const tip = document.createElement("div");
  tip.className = "tip";
  tip.hidden = true;
  document.body.appendChild(tip);
  function showTip(ev, html) {
    tip.innerHTML = html;
    tip.hidden = false;
    const x = Math.min(ev.clientX + 12, window.innerWidth - tip.offsetWidth - 8);
    tip.style.left = x + "px";
    tip.style.top = (ev.clientY + 14) + "px";
  }

  // ---- endpoints -------------------------------------------------------------------
  function limitOf(d) {
    const ls = d.replicas.items.filter((r) => r.state === "ready").map((r) => r.limit);
    return ls.length ? Math.min(...ls) : null;
  }

  const sparks = {};

  function phaseOf(d, full) {
    // the list's live counts say cold / starting / scaling / warm; the full status (fetched
    // every few seconds) also knows failing, and why
    if (full && full.state === "failing") return {phase: "failing", phase_reason: full.state_reason};
    const r = d.replicas;
    if (!r.desired && !r.ready && !r.starting) return {phase: "cold", phase_reason: "scaled to zero; the next request wakes it"};
    if (!r.ready) return {phase: "starting", phase_reason: `${r.starting} replica(s) starting, ${r.desired} desired`};
    if (r.ready !== r.desired || r.starting) return {phase: "scaling", phase_reason: `${r.ready} ready -> ${r.desired} desired`};
    return {phase: "warm", phase_reason: `${r.ready} ready`};
  }

  function drawSpark(canvas, spark) {
    // requests/s over the last 10 min, scaling decisions as ticks (up blue, down purple)
    const data = spark && spark.data;
    if (!data) return;
    const ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
    const t = data.columns.t, v = data.columns.rps;
    const lo = Math.max(data.now - 600, Math.min(t.length ? t[0] : data.now, ...data.events.map((e) => e.at), data.now - 120) - 8);
    const x = (at) => (at - lo) / (data.now - lo) * w;
    const top = Math.max(1, ...v.filter((a) => a != null));
    ctx.clearRect(0, 0, w, h);
    ctx.fillStyle = "#eef1f4";
    ctx.fillRect(0, h - 1, w, 1);
    for (const e of data.events) {
      if (!isDecision(e) || e.at < lo) continue;
      ctx.fillStyle = e.to < e.from ? "#8250df" : "#0969da";
      ctx.fillRect(Math.round(x(e.at)), 0, 1.5, h);
    }
    ctx.beginPath();
    let open = false;
    for (let i = 0; i < t.length; i++) {
      if (t[i] < lo || v[i] == null) { open = false; continue; }
      const px = x(t[i]), py = h - 2 - (h - 6) * v[i] / top;
      if (open) ctx.lineTo(px, py); else ctx.moveTo(px, py);
      open = true;
    }
    ctx.strokeStyle = "#0f7c8c";
    ctx.lineWidth = 1.5;
    ctx.stroke();
  }

  function endpointsPage() {
    main.innerHTML = `<h1>Endpoints</h1><p class="muted small">Every endpoint, live: what it
      runs, what it serves and what the platform learned. A click opens its charts and decisions.</p>
      <div class="facts" id="summary"></div><div id="list"></div>`;
    const list = document.getElementById("list");
    const details = {};  // name -> {at, d}: the full status, for the first DETAILED rows
    const DETAILED = 50;
    every(1000, async () => {
      const page = await api("/v1/deployments?limit=200");
      const deployments = page.deployments.map((d) => Object.assign({}, d, phaseOf(d, (details[d.name] || {}).d)));
      const stale = deployments.slice(0, DETAILED).filter((d) => !details[d.name] || Date.now() - details[d.name].at > 3000);
      for (const d of stale.slice(0, 10)) {
        details[d.name] = Object.assign(details[d.name] || {}, {at: Date.now()});
        api(`/v1/deployments/${encodeURIComponent(d.name)}`).then((full) => { details[d.name] = {at: Date.now(), d: full}; }).catch(() => {});
      }
      const count = (st) => deployments.filter((d) => d.phase === st).length;
      const sum = (f) => deployments.reduce((a, d) => a + (f(d) || 0), 0);
      const fact = (v, l) => `<div class="fact"><div class="v">${v}</div><div class="l">${l}</div></div>`;
      document.getElementById("summary").innerHTML = fact(page.total, "endpoints") +
        fact(count("warm") + count("scaling"), "serving") + fact(count("cold"), "scaled to zero") +
        fact(count("starting"), "starting") + fact(count("failing"), "failing") +
        fact(`${sum((d) => d.replicas.ready)} / ${sum((d) => d.replicas.desired)}`, "replicas ready / desired") +
        fact(num(sum((d) => (d.traffic || {}).rps)), "req/s") + fact(sum((d) => d.queue.depth), "queued");
      if (!deployments.length) {
        list.innerHTML = `<div class="panel empty"><p>No endpoints yet. Deploy one:</p>
          <pre>import lowtide\nlowtide.deploy(lambda x: x * 2, name="double")</pre></div>`;
        return;
      }
      list.innerHTML = `<table class="grid" id="endpoints"><thead><tr>
        <th>Endpoint</th><th>State</th><th class="num">Replicas<br>ready / desired</th>
        <th class="num">Queue</th><th class="num">Req/s</th><th class="num">p50</th><th class="num">p99</th>
        <th class="num">Learned limit</th><th>Req/s, 10 min <span class="muted">· decisions</span></th><th>Keep-alive</th><th>Last decision</th></tr></thead><tbody>` +
        deployments.map((d) => {
          const full = (details[d.name] || {}).d || {};
          const r = d.replicas, t = d.traffic || {}, q = full.queue || d.queue, ka = full.keep_alive || {};
          const last = full.last_decision, lim = full.replicas ? limitOf(full) : null;
          return `<tr class="row-link" data-name="${esc(d.name)}">
            <td class="name"><a href="/ui/endpoints/${esc(d.name)}">${esc(d.name)}</a><span class="sub">v${esc(d.version)}</span></td>
            <td>${badge(d.phase, d.phase_reason)}<span class="sub">${esc(d.phase_reason)}</span></td>
            <td class="num">${esc(r.ready)} / ${esc(r.desired)}${r.starting ? `<span class="sub">${esc(r.starting)} starting</span>` : ""}</td>
            <td class="num">${esc(d.queue.depth)}${q.oldest_age_s > 0.05 ? `<span class="sub">oldest ${dur(q.oldest_age_s)}</span>` : ""}</td>
            <td class="num">${num(t.rps)}</td><td class="num">${ms(t.p50_ms)}</td><td class="num">${ms(t.p99_ms)}</td>
            <td class="num">${lim == null ? "–" : esc(lim)}</td>
            <td><canvas class="spark" width="160" height="34" data-spark="${esc(d.name)}"></canvas></td>
            <td>${ka.keep_s == null ? "–" : dur(ka.keep_s)}<span class="sub">${esc(ka.reason || "")}</span></td>
            <td>${last ? `<span class="kind ${esc(last.kind)}">${esc(last.kind)}</span> <span class="muted small">${clock(last.at)}</span><span class="sub mono">${esc(last.reason)}</span>` : "–"}</td>
          </tr>`;
        }).join("") + "</tbody></table>" +
        (page.total > deployments.length ? `<p class="muted small">The first ${deployments.length} of ${page.total} endpoints, by name; details for the first ${DETAILED}.</p>` : "");
      list.querySelectorAll("canvas.spark").forEach((c) => drawSpark(c, sparks[c.dataset.spark]));
      for (const d of deployments.slice(0, DETAILED)) {
        const known = sparks[d.name];
        if (!known || Date.now() - known.at > 5000) {
          sparks[d.name] = Object.assign(known || {}, {at: Date.now()});
          api(`/v1/deployments/${encodeURIComponent(d.name)}/series?window=10m`).then((s) => {
            sparks[d.name] = {at: Date.now(), data: s};
          }).catch(() => {});
        }
      }
      list.querySelectorAll("tr.row-link").forEach((tr) => tr.addEventListener("click", (ev) => {
        if (ev.target.tagName !== "A") location.href = "/ui/endpoints/" + encodeURIComponent(tr.dataset.name);
      }));
    });
  }

  // ---- one endpoint ----------------------------------------------------------------
  const SCALING = new Set(["wake", "panic", "scale-up", "scale-down", "idle", "prewarm", "bounds"]);
  const isDecision = (e) => SCALING.has(e.kind) && e.from !== e.to;
  const COLORS = {a: "#0f7c8c", b: "#cf222e", c: "#8250df", d: "#d4a72c", e: "#6b7280"};
  const CHARTS = [
    {id: "rps", title: "Requests/s", series: [["rps", "req/s", COLORS.a]]},
    {id: "lat", title: "Latency (log scale)", unit: "ms", series: [["p50_ms", "p50 ms", COLORS.a], ["p99_ms", "p99 ms", COLORS.b]]},
    {id: "rep", title: "Replicas", step: true, series: [["ready", "ready", COLORS.a], ["desired", "desired", COLORS.c, [6, 4]]]},
    {id: "queue", title: "Queue", series: [["queued", "queued", COLORS.d], ["oldest_wait_s", "oldest wait s", COLORS.b, null, "y2"]]},
    {id: "util", title: "Utilization vs target", series: [["cpu", "CPU", COLORS.a], ["gpu", "GPU", COLORS.c], ["target", "target", COLORS.e, [4, 4]]]},
    {id: "limit", title: "Learned concurrency limit", step: true, series: [["limit", "limit", COLORS.c], ["in_flight", "in flight", COLORS.a]]},
  ];

  function markerPlugin(getEvents) {
    // one element per decision, kept across redraws (a hovered marker stays hovered)
    function place(u) {
      const kept = u._markers || (u._markers = new Map());
      const [lo, hi] = [u.scales.x.min, u.scales.x.max];
      const seen = new Set();
      for (const e of getEvents()) {
        if (!isDecision(e) || e.at < lo || e.at > hi) continue;
        const key = e.at + ":" + e.kind;
        seen.add(key);
        let m = kept.get(key);
        if (!m) {
          m = document.createElement("div");
          m.className = "marker" + (e.to < e.from ? " down" : "");
          m.dataset.reason = e.reason;
          m.addEventListener("mousemove", (ev) => showTip(ev, `<b>${clock(e.at)} · ${esc(e.kind)} ${esc(e.from)} → ${esc(e.to)}</b><br>${esc(e.reason)}`));
          m.addEventListener("mouseleave", () => { tip.hidden = true; });
          u.over.appendChild(m);
          kept.set(key, m);
        }
        m.style.left = u.valToPos(e.at, "x") + "px";
      }
      for (const [key, m] of kept) if (!seen.has(key)) { m.remove(); kept.delete(key); }
    }
    return {hooks: {draw: [place]}};
  }

  function latestLegend() {
    // off the chart, the legend shows the newest values instead of dashes
    const latest = (u) => {
      if (u.cursor.idx == null && u.data[0].length) u.setLegend({idx: u.data[0].length - 1});
    };
    return {hooks: {setData: [latest], setCursor: [latest]}};
  }

  function withGaps(cols, step) {
    // a missing step (the platform was down) breaks the line instead of bridging it
    const t = cols.t, out = {};
    Object.keys(cols).forEach((k) => { out[k] = []; });
    for (let i = 0; i < t.length; i++) {
      if (i > 0 && t[i] - t[i - 1] > step * 2.5) {
        Object.keys(cols).forEach((k) => out[k].push(k === "t" ? t[i - 1] + step : null));
      }
      Object.keys(cols).forEach((k) => out[k].push(cols[k][i]));
    }
    return out;
  }

  function endpointPage() {
    let windowName = "10m", events = [], charts = {}, data = null;
    main.innerHTML = `<div class="ep-head"><h1>${esc(NAME)}</h1><span id="badge"></span><span class="url" id="url"></span></div>
      <div class="facts" id="facts"></div>
      <div class="toolbar"><div class="seg" id="win"><button data-w="10m" class="on">10 min</button><button data-w="1h">1 h</button><button data-w="24h">24 h</button></div>
      <span class="muted small">Markers: scaling decisions (hover for the reason; <span style="color:#0969da">up</span>, <span style="color:#8250df">down</span>)</span></div>
      <div class="charts" id="charts"></div>
      <h2>Decisions in this window</h2><div id="events"></div>
      <h2>Replicas</h2><div id="replicas"></div>
      <h2>Versions</h2><div id="versions"></div>
      <h2>Log tail</h2><pre class="logs" id="logs"></pre>`;
    const chartsEl = document.getElementById("charts");
    for (const c of CHARTS) {
      const box = document.createElement("div");
      box.className = "chart";
      box.id = "chart-" + c.id;
      box.innerHTML = `<div class="title">${esc(c.title)}</div>`;
      chartsEl.appendChild(box);
    }
    document.querySelectorAll("#win button").forEach((b) => b.addEventListener("click", () => {
      windowName = b.dataset.w;
      document.querySelectorAll("#win button").forEach((x) => x.classList.toggle("on", x === b));
      refreshSeries();
    }));

    function build(c, cols) {
      const box = document.getElementById("chart-" + c.id);
      const width = Math.max(300, box.clientWidth - 20);
      const series = [{value: (u, v) => v == null ? "–" : clock(v)}];
      for (const [key, label, stroke, dash, scale] of c.series) {
        series.push({label, stroke, width: 1.6, dash: dash || undefined, scale: scale || "y",
          paths: c.step ? uPlot.paths.stepped({align: 1}) : undefined,
          spanGaps: false, points: {show: false},
          value: (u, v) => v == null ? "–" : key === "cpu" || key === "gpu" || key === "target" ? pct(v) : num(v, 2)});
      }
      const yValues = c.id === "util" ? (u, vs) => vs.map((v) => Math.round(v * 100) + "%") :
        c.id === "lat" ? (u, vs) => vs.map((v) => v >= 1000 ? num(v / 1000) + " s" : num(v) + " ms") :
        (u, vs) => vs.map((v) => num(v));
      const logSplits = (u, i, lo, hi) => {
        const out = [];
        for (let p = Math.floor(Math.log10(Math.max(lo, 0.01))); 10 ** p <= hi * 1.0001; p++) out.push(10 ** p);
        return out;
      };
      const axes = [{stroke: "#6b7280", grid: {stroke: "#eef1f4"}, ticks: {stroke: "#e3e6ea"}, space: 80,
        values: (u, vs, ai, space, incr) => vs.map((v) => v == null ? "" : incr < 60 ? clock(v) : clockShort(v))},
        {stroke: "#6b7280", grid: {stroke: "#eef1f4"}, ticks: {stroke: "#e3e6ea"}, size: c.id === "lat" ? 66 : 52, values: yValues,
         splits: c.id === "lat" ? logSplits : undefined}];
      if (c.series.some((s) => s[4] === "y2")) axes.push({scale: "y2", side: 1, stroke: "#cf222e", grid: {show: false}, size: 44});
      const scales = {x: {time: true}, y: c.id === "lat" ? {distr: 3, log: 10} :
        {range: (u, lo, hi) => [0, Math.max(hi * 1.1, c.id === "util" ? 1 : c.id === "rep" || c.id === "limit" ? 2 : 1)]}};
      if (axes.length > 2) scales.y2 = {range: (u, lo, hi) => [0, Math.max(hi * 1.1, 1)]};
      const opts = {width, height: 190, series, axes, scales, cursor: {drag: {x: false, y: false}},
        legend: {live: true}, plugins: [markerPlugin(() => events), latestLegend()]};
      return new uPlot(opts, cols, box);
    }

    function draw() {
      if (!data) return;
      const cols = withGaps(data.columns, data.step_s);
      const n = cols.t.length;
      cols.target = new Array(n).fill(data.targets.cpu);
      const now = data.now, span = data.step_s * ({"10m": 300, "1h": 360, "24h": 360})[windowName];
      // a young endpoint's charts span its data (and its decisions, off the edge), not an empty window
      const earliest = Math.min(cols.t.length ? cols.t[0] : now, ...events.map((e) => e.at), now - 120);
      const lo = Math.max(now - span, earliest - 4 * data.step_s);
      for (const c of CHARTS) {
        const arr = [cols.t].concat(c.series.map(([key]) => cols[key] || new Array(n).fill(null)));
        if (!charts[c.id]) charts[c.id] = build(c, arr);
        else charts[c.id].setData(arr, false);
        charts[c.id].setScale("x", {min: lo, max: now});
      }
      const newest = events.slice().reverse();
      document.getElementById("events").innerHTML = !events.length ? `<div class="panel empty">No decisions in this window.</div>` :
        `<table class="grid events" id="decisions"><thead><tr><th>When</th><th>Kind</th><th class="num">Replicas</th><th>Reason</th></tr></thead><tbody>` +
        newest.slice(0, 200).map((e) => `<tr class="${isDecision(e) ? "scale" : ""}"><td class="when">${clock(e.at)}</td>
          <td><span class="kind ${esc(e.kind)}">${esc(e.kind)}</span></td>
          <td class="num">${isDecision(e) ? `${esc(e.from)} → ${esc(e.to)}` : ""}</td><td class="reason">${esc(e.reason)}</td></tr>`).join("") +
        "</tbody></table>";
    }

    async function refreshSeries() {
      data = await api(`/v1/deployments/${encodeURIComponent(NAME)}/series?window=${windowName}`);
      events = data.events;
      draw();
    }
    window.addEventListener("resize", () => {
      for (const c of CHARTS) if (charts[c.id]) charts[c.id].setSize({width: Math.max(300, document.getElementById("chart-" + c.id).clientWidth - 20), height: 190});
    });

    every(2000, refreshSeries);
    every(1000, async () => {
      let d;
      try { d = await api(`/v1/deployments/${encodeURIComponent(NAME)}`); } catch (e) {
        if (e.status === 404) main.innerHTML = `<div class="panel empty">No endpoint named <b>${esc(NAME)}</b>. <a href="/ui/">All endpoints</a></div>`;
        throw e;
      }
      renderStatus(d);
    });
    tailLogs();
    every(10000, refreshVersions);
  }

  async function refreshVersions() {
    const box = document.getElementById("versions");
    const got = await api(`/v1/deployments/${encodeURIComponent(NAME)}/versions`);
    box.innerHTML = `<table class="grid" id="version-table"><thead><tr><th>Version</th><th>Deployed</th><th>By</th>
      <th>Origin</th><th>Artifact</th><th></th></tr></thead><tbody>` + got.versions.map((v) => `<tr>
      <td>v${esc(v.version)} ${v.current ? '<span class="badge warm">current</span>' : ""}</td>
      <td>${new Date(v.deployed_at * 1000).toLocaleString([], {hour12: false})}</td><td>${esc(v.deployed_by || "–")}</td>
      <td>${esc(v.origin)}</td><td class="mono">${esc(String((v.digests || {}).artifact || "").slice(0, 19))}</td>
      <td>${v.current ? "" : `<button class="rollback" data-to="${esc(v.version)}">Roll back to v${esc(v.version)}</button>`}</td></tr>`).join("") +
      `</tbody></table><p class="muted small">The last ${esc(got.keep)} versions are kept; a rollback deploys one again as a new version.</p>`;
    box.querySelectorAll("button.rollback").forEach((b) => b.addEventListener("click", async () => {
      if (!confirm(`Deploy v${b.dataset.to} of ${NAME} again, as a new version?`)) return;
      b.disabled = true;
      try {
        await api(`/v1/deployments/${encodeURIComponent(NAME)}/rollback`, {method: "POST",
          headers: {"Content-Type": "application/json", "X-Lowtide-CSRF": CSRF}, body: JSON.stringify({to: +b.dataset.to})});
      } catch (e) { alert("Rollback refused: " + e.message); }
      refreshVersions();
    }));
  }

  function renderStatus(d) {
    const r = d.replicas, t = d.traffic || {}, s = d.spec, ka = d.keep_alive || {};
    document.getElementById("badge").innerHTML = badge(d.state, d.state_reason);
    document.getElementById("url").textContent = `v${d.version} · ${d.url}`;
    const fact = (v, l, cls) => `<div class="fact ${cls || ""}"><div class="v">${v}</div><div class="l">${l}</div></div>`;
    const lim = limitOf(d);
    document.getElementById("facts").innerHTML =
      fact(`${esc(r.ready)} / ${esc(r.desired)}`, "ready / desired") + fact(num(t.rps), "req/s (10 s)") +
      fact(`${ms(t.p50_ms)} <span class="muted small">/ ${ms(t.p99_ms)}</span>`, "p50 / p99") +
      fact(`${esc(d.queue.depth)}`, `queued · oldest ${dur(d.queue.oldest_age_s)}`) +
      fact(lim == null ? "–" : esc(lim), "learned limit") +
      fact(`${esc(s.cpu)} cpu${s.gpu ? ` · ${esc(s.gpu)} gpu` : ""}`, `${bytes(s.memory_bytes)} · ${esc(s.min_replicas)}–${s.max_replicas == null ? "∞" : esc(s.max_replicas)} replicas`) +
      fact(`keep-alive ${dur(ka.keep_s)}<br><span class="muted">${esc(ka.reason)}</span>`, d.placement ? esc(d.placement) : "", "wide");
    const rows = r.items.map((x) => {
      const st = x.startup || {};
      const total = (st.queue_s || 0) + (st.start_s || 0) + (st.load_s || 0) + (st.first_response_s || 0);
      const w = (v) => total > 0 ? (100 * (v || 0) / total).toFixed(1) + "%" : "0";
      const phases = st.path ? `${esc(st.path === "pool" ? "prewarmed pool" : "new process")} · ${dur(st.total_s)}
        <div class="phases" title="queue ${dur(st.queue_s)} · start ${dur(st.start_s)} · load ${dur(st.load_s)} · first answer ${dur(st.first_response_s)}">
        <span class="ph-queue" style="width:${w(st.queue_s)}"></span><span class="ph-start" style="width:${w(st.start_s)}"></span>
        <span class="ph-load" style="width:${w(st.load_s)}"></span><span class="ph-first" style="width:${w(st.first_response_s)}"></span></div>
        <span class="sub">queue ${dur(st.queue_s)} · start ${dur(st.start_s)} · load ${dur(st.load_s)}${st.first_response_s != null ? ` · first answer ${dur(st.first_response_s)}` : ""}</span>` : "–";
      return `<tr><td class="mono">${esc(x.id)}<span class="sub">v${esc(x.version)} · ${dur(x.age_s)} old</span></td>
        <td><span class="chip ${esc(x.state)}">${esc(x.state)}</span></td><td class="mono">${esc(x.host)}<span class="sub">${esc(x.address)}</span></td>
        <td>${phases}</td><td class="num">${esc(x.limit)}<span class="sub">${esc(x.limit_reason || "")}</span></td><td class="num">${esc(x.in_flight)}</td>
        <td class="num">${x.cpu_cores == null ? "–" : num(x.cpu_cores, 2) + " cores"}</td>
        <td class="num">${x.gpu_utilization_percent == null ? "–" : Math.round(x.gpu_utilization_percent) + " %"}${x.gpu_memory_bytes ? `<span class="sub">${bytes(x.gpu_memory_bytes)}</span>` : ""}</td></tr>`;
    }).join("");
    document.getElementById("replicas").innerHTML = !r.items.length ? `<div class="panel empty">No replicas: ${esc(d.state_reason)}.</div>` :
      `<table class="grid" id="replica-table"><thead><tr><th>Replica</th><th>State</th><th>Host</th><th>Start path and phases</th>
      <th class="num">Limit</th><th class="num">In flight</th><th class="num">CPU</th><th class="num">GPU</th></tr></thead><tbody>${rows}</tbody></table>`;
  }

  async function tailLogs() {
    const pre = document.getElementById("logs");
    let after = "0-0", lines = [];
    const first = await api(`/v1/deployments/${encodeURIComponent(NAME)}/logs?limit=5000`).catch(() => null);
    const show = (batch) => {
      if (!batch.length) return;
      lines = lines.concat(batch).slice(-300);
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 20;
      pre.innerHTML = lines.map((l) => `<span class="rid">${clock(l.at)} ${esc(l.replica)}</span> ${esc(l.line)}`).join("\n");
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    };
    if (first) { show(first.lines.slice(-300)); after = first.next; }
    if (!lines.length) pre.textContent = "(no output yet: what the function prints appears here)";
    for (;;) {
      try {
        const got = await api(`/v1/deployments/${encodeURIComponent(NAME)}/logs?after=${after}&wait_ms=10000`);
        if (got.lines.length && !lines.length) pre.textContent = "";
        show(got.lines);
        after = got.next;
      } catch (e) {
        await new Promise((r) => setTimeout(r, 2000));
      }
    }
  }

  // ---- hosts -----------------------------------------------------------------------
  function bar(label, alloc, used, total, text) {
    const w = (v) => total ? Math.min(100, 100 * (v || 0) / total).toFixed(1) + "%" : "0";
    return `<div class="bar-row"><span class="lbl">${label}</span><div class="bar">
      ${alloc != null ? `<span class="alloc" style="width:${w(alloc)}"></span>` : ""}
      ${used != null ? `<span class="used" style="width:${w(used)}"></span>` : ""}</div><span class="val">${text}</span></div>`;
  }

  function hostCard(h) {
    const cap = h.capacity, al = h.allocated, ut = h.utilization, load = h.load || {};
    const cpus = cap.cpu_schedulable || cap.cpus || 0;
    const used = ut.cpu_percent == null ? null : ut.cpu_percent / 100 * (cap.cpus || 0);
    let out = `<div class="panel host"><div class="hd"><span class="id">${esc(h.id)}</span>
      <span class="badge ${h.state === "live" ? "warm" : "failing"}">${esc(h.state)}</span>
      <span class="kind">${esc(h.kind)}</span><span class="muted small">${esc(h.address || "")}${h.python ? " · Python " + esc(h.python) : ""}
      ${h.last_heartbeat_age_s != null ? " · beat " + num(h.last_heartbeat_age_s) + " s ago" : ""}</span></div>
      <div class="legend-inline"><span><i style="background:#b6e3ea"></i>booked by replicas (placement)</span><span><i style="background:#0f7c8c"></i>in use</span></div>`;
    out += bar("CPU in use", null, used, cap.cpus, `${num(used, 1)} of ${num(cap.cpus, 0)} cores`);
    out += bar("CPU booked", al.cpu, null, cpus, `${num(al.cpu, 2)} of ${num(cpus, 0)} schedulable${cpus > (cap.cpus || 0) ? " (" + num(cpus / cap.cpus, 0) + "x)" : ""}`);
    out += bar("Memory", al.memory_bytes, ut.memory_used_bytes, cap.memory_bytes, `${bytes(ut.memory_used_bytes)} / ${bytes(cap.memory_bytes)} · ${bytes(al.memory_bytes)} booked`);
    for (const g of cap.gpus || []) {
      const idx = g.index != null ? g.index : 0;
      const u = (ut.gpus || []).find((x) => x.index === idx) || {};
      const held = (al.gpus || []).includes(idx);
      out += bar(`<span title="${esc(g.name || "")}">GPU ${idx}</span>`, held ? 1 : 0, (u.utilization_percent || 0) / 100, 1,
        `${u.utilization_percent == null ? "–" : Math.round(u.utilization_percent) + " %"} · ${bytes(u.memory_used_bytes)} / ${bytes(g.memory_bytes)} · ${held ? "booked" : "free"}`);
    }
    const pool = load.pool;
    if (pool) {
      const workers = Array.isArray(pool) ? pool : pool.workers || [];
      out += `<div class="bar-row"><span class="lbl">Prewarmed pool</span><span class="small">${esc(poolText(pool, workers))}</span><span></span></div>`;
    }
    const reps = h.replicas || [];
    out += `<div class="chips">${reps.length ? reps.map((r) => `<span class="chip ${esc(r.state)}" title="${esc(r.id)}">
      <a href="/ui/endpoints/${esc(r.endpoint)}">${esc(r.endpoint)}</a> ${esc(r.state)}${r.cpu_cores != null ? " · " + num(r.cpu_cores, 2) + " cores" : ""}</span>`).join("") :
      `<span class="muted small">no replicas</span>`}</div></div>`;
    return out;
  }

  function poolText(pool, workers) {
    if (typeof pool !== "object") return String(pool);
    const parts = [];
    for (const [k, v] of Object.entries(pool)) {
      if (k === "workers" || v == null || typeof v === "object") continue;
      if (k.endsWith("_bytes")) parts.push(`${k.slice(0, -6).replace(/_/g, " ")} ${bytes(v)}`);
      else parts.push(typeof v === "number" ? `${v} ${k.replace(/_/g, " ")}` : `${k.replace(/_/g, " ")} ${v}`);
    }
    if (workers.length) parts.push(`${workers.length} worker(s)`);
    return parts.join(" · ") || "–";
  }

  function hostsPage() {
    main.innerHTML = `<h1>Hosts</h1><p class="muted small">Capacity, what placement allocated and what is
      in use, per host and GPU; the prewarmed pool; hosts that stopped heartbeating.</p>
      <div class="facts" id="summary"></div><div class="hosts" id="hosts"></div><h2>Lost hosts</h2><div id="lost"></div>`;
    every(2000, async () => {
      const {hosts, lost} = await api("/v1/hosts");
      const sum = (f) => hosts.reduce((a, h) => a + (f(h) || 0), 0);
      const fact = (v, l) => `<div class="fact"><div class="v">${v}</div><div class="l">${l}</div></div>`;
      const gpus = sum((h) => (h.capacity.gpus || []).length);
      document.getElementById("summary").innerHTML = fact(hosts.length, "live hosts") + fact(lost.length, "lost") +
        fact(num(sum((h) => h.capacity.cpus), 0), "cores") + fact(num(sum((h) => h.allocated.cpu), 2), "cores booked") +
        fact(bytes(sum((h) => h.capacity.memory_bytes)), "memory") + fact(`${sum((h) => h.allocated.gpus.length)} / ${gpus}`, "GPUs booked") +
        fact(sum((h) => (h.replicas || []).length), "replicas") + fact(sum((h) => ((h.load || {}).pool || {}).ready), "pool workers ready");
      document.getElementById("hosts").innerHTML = hosts.length ? hosts.map(hostCard).join("") :
        `<div class="panel empty">No live host agents. Start one: <code>lowtide agent</code></div>`;
      document.getElementById("lost").innerHTML = lost.length ?
        `<table class="grid"><thead><tr><th>Host</th><th>Kind</th><th>Address</th><th>Capacity</th><th>Replicas it held</th></tr></thead><tbody>` +
        lost.map((h) => `<tr><td class="mono">${esc(h.id)}</td><td>${esc(h.kind)}</td><td>${esc(h.address || "")}</td>
          <td>${num(h.capacity.cpus, 0)} cores · ${bytes(h.capacity.memory_bytes)}${(h.capacity.gpus || []).length ? ` · ${h.capacity.gpus.length} GPUs` : ""}</td>
          <td>${(h.replicas || []).map((r) => esc(r.endpoint + " " + r.id)).join(", ") || "–"}</td></tr>`).join("") + "</tbody></table>" :
        `<p class="muted small">None: every registered host is heartbeating.</p>`;
    });
  }

  ({endpoints: endpointsPage, endpoint: endpointPage, hosts: hostsPage})[PAGE]();
})();
