// fedcare dashboard: fills the runs list and run pages from the JSON API; live while a run is in progress.
// Every value from the store goes in with textContent (never innerHTML): a site's error message is data.
"use strict";
(function () {
  const body = document.body;
  const $ = (sel) => document.querySelector(sel);

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    return node;
  }

  async function getJSON(url) {
    const r = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
    return r.json();
  }

  function bytes(n) {
    if (n === null || n === undefined) return "—";
    const units = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  }
  function when(iso) { return iso ? iso.replace("T", " ").replace("+00:00", " UTC") : "—"; }
  function secs(s) {
    if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  }
  function badge(status) { return el("span", { class: `badge ${status}`, text: status }); }
  function fmt(v) { return typeof v === "number" ? window.FedChart.fmt(v) : String(v); }
  function fail(err) {
    const box = $("main");
    box.prepend(el("p", { class: "error", text: `cannot load: ${err.message}` }));
  }

  function showAudit(target, audit) {
    if (!target || !audit) return;
    target.textContent = "";
    if (!audit.configured) { target.appendChild(el("span", { class: "muted", text: "no audit log given to this dashboard (--audit PATH)" })); return; }
    const state = audit.ok ? el("span", { class: "badge completed", text: "chain intact" }) : el("span", { class: "badge failed", text: "BROKEN" });
    target.append(state, ` audit log ${audit.path}: ${audit.entries} entries` + (audit.ok ? `, head ${audit.head}` : `: ${audit.problem}`));
  }

  // -- runs list ----------------------------------------------------------------------------
  async function runsView() {
    let timer = null;
    async function load() {
      const [data, audit] = await Promise.all([getJSON("/api/runs"), getJSON("/api/audit")]);
      showAudit($("#audit"), audit);
      const tbody = $("#runs tbody");
      tbody.textContent = "";
      for (const r of data.runs) {
        const link = el("a", { href: `/runs/${encodeURIComponent(r.id)}`, text: r.name || r.id });
        tbody.appendChild(el("tr", { "data-run": r.id, "data-status": r.status },
          el("td", {}, link, el("div", { class: "muted small", text: r.id })),
          el("td", {}, badge(r.status)),
          el("td", { text: r.study }),
          el("td", { text: r.strategy }),
          el("td", {}, el("span", { text: r.task }), el("div", { class: "mono small", text: r.task_hash.slice(0, 16) + "…", title: r.task_hash })),
          el("td", { text: r.sites.length ? `${r.sites.length}: ${r.sites.join(", ")}` : "—" }),
          el("td", { class: "num", text: `${r.rounds_done} / ${r.rounds}` }),
          el("td", { text: when(r.started) }),
          el("td", { text: r.ended ? when(r.ended) : "—" })));
      }
      $("#empty").hidden = data.runs.length > 0;
      const live = data.runs.some((r) => r.status === "running");
      clearTimeout(timer);
      if (live) timer = setTimeout(() => load().catch(fail), 3000);
    }
    await load();
  }

  // -- one run ------------------------------------------------------------------------------
  const PHASES = [["eval", "evaluation on each site's test split"], ["fit", "local training"], ["traffic", "bytes per round"]];

  function renderCharts(metrics, sites) {
    const box = $("#charts");
    box.textContent = "";
    const colours = new Map(sites.map((s, i) => [s, window.FedChart.palette[i % window.FedChart.palette.length]]));
    for (const [phase, label] of PHASES) {
      const names = Object.keys(metrics.per_site[phase] || {}).filter((n) => n !== "num_examples").sort();
      for (const name of names) {
        const bySite = metrics.per_site[phase][name];
        const series = Object.keys(bySite).sort().map((s) => ({ name: s, color: colours.get(s), points: bySite[s] }));
        const agg = (metrics.aggregate[phase] || {})[name];
        if (agg && agg.length) series.push({ name: phase === "eval" ? "all sites (weighted)" : "aggregate", color: "#222", points: agg, dashed: true });
        const div = el("div", { id: `chart-${phase}-${name}`, "data-phase": phase, "data-metric": name });
        box.appendChild(div);
        window.FedChart.line(div, { title: `${name} · ${label}`, series });
      }
    }
    if (!box.children.length) box.appendChild(el("p", { class: "muted", text: "no rounds recorded yet" }));
  }

  function renderParticipation(run) {
    const box = $("#participation");
    box.textContent = "";
    const n = Math.max(run.rounds, run.rounds_done, 1);
    const sites = Object.keys(run.participation).sort();
    if (!sites.length || !run.rounds_done) { box.appendChild(el("p", { class: "muted", text: "no rounds yet" })); return; }
    const cell = Math.max(3, Math.min(16, Math.floor(900 / n))), label = 150;
    const NS = "http://www.w3.org/2000/svg";
    const W = label + Math.max(n * cell + 4, 140), H = sites.length * (cell + 3) + 20;
    const root = document.createElementNS(NS, "svg");
    root.setAttribute("width", W); root.setAttribute("height", H); root.setAttribute("class", "participation");
    sites.forEach((site, i) => {
      const y = i * (cell + 3);
      const t = document.createElementNS(NS, "text");
      t.setAttribute("x", 0); t.setAttribute("y", y + cell - 2); t.setAttribute("class", "tick");
      t.textContent = site;
      root.appendChild(t);
      const states = run.participation[site];
      // one cell per round; beyond 200 rounds, one bar per stretch of rounds in the same state
      const merge = run.rounds_done > 200;
      for (let r = 1; r <= run.rounds_done; r++) {
        const state = states[String(r)] || "none";
        let last = r;
        while (merge && last < run.rounds_done && (states[String(last + 1)] || "none") === state) last++;
        const rect = document.createElementNS(NS, "rect");
        rect.setAttribute("x", label + (r - 1) * cell); rect.setAttribute("y", y);
        rect.setAttribute("width", Math.max(1, (last - r + 1) * cell - 1)); rect.setAttribute("height", cell);
        rect.setAttribute("class", `cell ${state}`);
        rect.setAttribute("data-site", site); rect.setAttribute("data-round", r);
        if (last > r) rect.setAttribute("data-last", last);
        const title = document.createElementNS(NS, "title");
        const span = last > r ? `rounds ${r}–${last}` : `round ${r}`;
        title.textContent = `${site} · ${span}: ${state === "none" ? "not sampled" : state}`;
        rect.appendChild(title);
        root.appendChild(rect);
        r = last;
      }
    });
    const t = document.createElementNS(NS, "text");
    t.setAttribute("x", label); t.setAttribute("y", H - 4); t.setAttribute("class", "tick");
    t.textContent = `rounds 1–${run.rounds_done}`;
    root.appendChild(t);
    box.appendChild(root);
  }

  function table(head, rows) {
    const t = el("table", { class: "grid" });
    t.appendChild(el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { text: h })))));
    const tb = el("tbody");
    for (const r of rows) tb.appendChild(el("tr", {}, ...r.map((c) => (c instanceof Node ? el("td", {}, c) : el("td", { text: String(c) })))));
    t.appendChild(tb);
    return t;
  }

  function renderRun(run) {
    $("#title").textContent = "";
    $("#title").append(`${run.name} `, badge(run.status));
    $("#subtitle").textContent = `${run.id} · study ${run.study || "—"} · ${run.strategy} · task ${run.task} ${run.task_hash} · data ${run.dataset || "—"} · seed ${run.seed}`;
    const counts = { refused: 0, dropped: 0, failed: 0 };
    for (const e of run.events) counts[e.kind] = (counts[e.kind] || 0) + 1;
    const cards = [
      ["rounds", `${run.rounds_done} / ${run.rounds}`],
      ["sites", String(run.sites.length)],
      ["duration", secs(run.duration_s)],
      ["started", when(run.started)],
      ["ended", run.ended ? when(run.ended) : "—"],
      ["bytes to sites", bytes(run.bytes.to_sites)],
      ["bytes from sites", bytes(run.bytes.from_sites)],
      ["refused · dropped · failed", `${counts.refused} · ${counts.dropped} · ${counts.failed}`],
    ];
    const box = $("#cards");
    box.textContent = "";
    for (const [k, v] of cards) box.appendChild(el("div", { class: "card", "data-card": k }, el("div", { class: "muted small", text: k }), el("div", { class: "big", text: v })));
    if (run.message) box.appendChild(el("div", { class: "card wide" }, el("div", { class: "muted small", text: "message" }), el("div", { text: run.message })));

    const ev = $("#events tbody");
    ev.textContent = "";
    for (const e of run.events) ev.appendChild(el("tr", { "data-kind": e.kind }, el("td", { class: "num", text: String(e.round_no) }), el("td", { text: e.site }), el("td", {}, badge(e.kind)), el("td", { class: "reason", text: e.message })));
    if (!run.events.length) ev.appendChild(el("tr", {}, el("td", { colspan: "4", class: "muted", text: "none: every sampled site answered every round" })));

    const rt = $("#rounds tbody");
    rt.textContent = "";
    const newest = [...run.rounds_list].reverse().slice(0, 200);
    if (run.rounds_list.length > newest.length) {
      rt.appendChild(el("tr", {}, el("td", { colspan: "6", class: "muted", text: `the latest ${newest.length} of ${run.rounds_list.length} rounds (all of them: /api/runs/${run.id})` })));
    }
    for (const r of newest) {
      const m = Object.entries(r.eval_metrics).filter(([k]) => k !== "num_examples").map(([k, v]) => `${k} ${fmt(v)}`).join(" · ");
      rt.appendChild(el("tr", {}, el("td", { class: "num", text: String(r.round_no) }), el("td", { class: "num", text: `${r.n_succeeded} / ${r.n_sampled}` }),
        el("td", { class: "num", text: secs(r.duration_s) }), el("td", { class: "num", text: bytes(r.bytes_to_sites) }),
        el("td", { class: "num", text: bytes(r.bytes_from_sites) }), el("td", { text: m || "—" })));
    }

    const pv = $("#privacy");
    pv.textContent = "";
    const sites = Object.keys(run.privacy);
    if (sites.length) {
      pv.appendChild(table(["site", "ε this run", "ε total (budget scope)", "δ", "mechanism", "rounds charged"],
        sites.map((s) => { const p = run.privacy[s]; return [s, p.epsilon_run.toFixed(3), p.epsilon_total.toFixed(3), p.delta, p.mechanism, p.rounds]; })));
    } else pv.appendChild(el("p", { class: "muted", text: "no privacy ledger entries for this run in this store (non-private, or each deployed site keeps its ledger at the site: see its console)" }));

    const ts = $("#tests");
    ts.textContent = "";
    const tsites = Object.keys(run.test_metrics);
    if (tsites.length) {
      const names = [...new Set(tsites.flatMap((s) => Object.keys(run.test_metrics[s])))].sort();
      ts.appendChild(table(["site", ...names], tsites.map((s) => [s, ...names.map((n) => (n in run.test_metrics[s] ? fmt(run.test_metrics[s][n]) : "—"))])));
    } else ts.appendChild(el("p", { class: "muted", text: "none recorded" }));

    showAudit($("#audit"), run.audit);
    $("#config").textContent = JSON.stringify({ strategy: run.strategy, task: run.task, task_hash: run.task_hash, seed: run.seed, rounds: run.rounds, dataset: run.dataset, ...run.config }, null, 2);
    renderParticipation(run);
  }

  async function runView() {
    const id = body.dataset.run;
    const base = `/api/runs/${encodeURIComponent(id)}`;
    async function load() {
      const [run, metrics, audit] = await Promise.all([getJSON(base), getJSON(`${base}/metrics`), getJSON("/api/audit")]);
      run.audit = audit;
      renderRun(run);
      renderCharts(metrics, run.sites);
      body.dataset.status = run.status;
      body.dataset.roundsDone = String(run.rounds_done);
      return run;
    }
    const run = await load();
    if (run.status !== "running") return;
    $("#live").hidden = false;
    const stream = new EventSource(`${base}/stream`);
    let busy = false, again = false;
    function refresh() {
      if (busy) { again = true; return; }
      busy = true;
      load().catch(fail).finally(() => { busy = false; if (again) { again = false; refresh(); } });
    }
    stream.addEventListener("update", refresh);
    stream.addEventListener("end", () => { stream.close(); $("#live").hidden = true; refresh(); });
  }

  const view = body.dataset.view;
  (view === "runs" ? runsView() : view === "run" ? runView() : Promise.resolve()).catch(fail);
})();
