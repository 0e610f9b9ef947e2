// fedcare site console: what this site did, refused and sent, and the privacy it spent (its own records).
"use strict";
(function () {
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
    const units = ["B", "kB", "MB", "GB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  }
  const when = (iso) => (iso ? iso.replace("T", " ").replace("+00:00", " UTC") : "—");
  const badge = (s) => el("span", { class: `badge ${s}`, text: s });
  const eps = (v) => (v === null || v === undefined ? "—" : v.toFixed(3));
  function table(head, rows) {
    const t = el("table", { class: "grid" });
    t.appendChild(el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { text: h })))));
    const tb = el("tbody");
    for (const r of rows) tb.appendChild(el("tr", {}, ...r.map((c) => (c instanceof Node ? el("td", {}, c) : el("td", { text: String(c) })))));
    t.appendChild(tb);
    return t;
  }

  async function load() {
    const [site, ins, out, runs, priv] = await Promise.all(["site", "instructions", "outgoing", "runs", "privacy"].map((p) => getJSON(`/api/${p}`)));
    $("#title").textContent = `site console · ${site.site}`;
    $("#subtitle").textContent = `coordinator ${site.coordinator} · studies ${site.studies.join(", ")} · local view from this site's own audit log and ledger`;

    const refused = ins.instructions.filter((i) => i.outcome === "refused").length;
    const executed = ins.instructions.filter((i) => i.outcome === "executed").length;
    const a = site.audit;
    const auditText = !a.configured ? "no audit log" : a.ok ? `intact · ${a.entries} entries` : `BROKEN: ${a.problem}`;
    const cards = [["audit verify", auditText, a.ok ? "ok" : "failed"], ["instructions executed", String(executed)],
      ["instructions refused", String(refused)], ["replies sent", String(out.outgoing.length)],
      ["bytes sent", bytes(out.outgoing.reduce((s, o) => s + o.bytes, 0))],
      ["ε spent / budget", `${eps(priv.spent)} / ${priv.budget === null ? "no cap" : priv.budget}`]];
    const box = $("#cards");
    box.textContent = "";
    for (const [k, v, cls] of cards) box.appendChild(el("div", { class: `card ${cls || ""}`, "data-card": k }, el("div", { class: "muted small", text: k }), el("div", { class: "big", text: v })));
    if (a.configured && a.ok) box.appendChild(el("div", { class: "card wide" }, el("div", { class: "muted small", text: "audit head (seq:sha256)" }), el("div", { class: "mono small", text: a.head })));

    const budget = $("#budget");
    budget.textContent = "";
    if (priv.budget) {
      const share = priv.spent / priv.budget;
      const meter = el("div", { class: `meter ${share > 1 ? "over" : share > 0.8 ? "high" : ""}` }, el("div"));
      meter.firstChild.style.width = `${Math.min(100, share * 100).toFixed(1)}%`;
      budget.append(meter, el("p", { id: "epsilon", text: `ε spent ${eps(priv.spent)} of ${priv.budget} (δ = ${priv.delta}); ${eps(Math.max(0, priv.budget - priv.spent))} left` }));
    } else budget.appendChild(el("p", { id: "epsilon", text: `ε spent ${eps(priv.spent)} (δ = ${priv.delta}); this site set no budget` }));
    if (priv.problem) budget.appendChild(el("p", { class: "muted", text: priv.problem }));
    const ledger = $("#ledger");
    ledger.textContent = "";
    if (priv.entries.length) {
      ledger.appendChild(table(["run", "round", "mechanism", "noise multiplier", "sample rate", "steps", "ε this round", "ε total"],
        priv.entries.slice(0, 200).map((e) => [e.run_id, e.round_no, e.mechanism, e.noise_multiplier, e.sample_rate, e.steps, eps(e.epsilon_round), eps(e.epsilon_total)])));
    }

    const rb = $("#runs");
    rb.textContent = "";
    if (runs.runs.length) {
      rb.appendChild(table(["run", "study", "task · hash", "executed", "refused", "failed", "bytes sent", "ε this run", "finished"],
        runs.runs.map((r) => [r.run_id, r.study, el("span", { class: "mono small", text: `${r.task} ${r.task_hash.slice(0, 16)}… ${r.hash_approved ? "(approved)" : "(NOT approved)"}` }),
          r.executed, r.refused, r.failed, bytes(r.bytes_out), eps(r.epsilon), r.finished ? "yes" : "no"])));
    } else rb.appendChild(el("p", { class: "muted", text: "this site has not joined a run yet" }));

    const it = $("#instructions tbody");
    it.textContent = "";
    for (const i of ins.instructions) {
      const hash = i.task_hash ? el("span", { class: "mono small", title: i.task_hash, text: `${i.task_hash.slice(0, 12)}… ${i.hash_approved ? "✓" : "✗ not approved"}` }) : "";
      it.appendChild(el("tr", { "data-outcome": i.outcome }, el("td", { class: "num", text: String(i.seq) }), el("td", { text: when(i.time) }),
        el("td", { class: "nowrap", text: i.run_id }), el("td", { class: "num", text: i.round_no === null ? "" : String(i.round_no) }), el("td", { text: i.kind }),
        el("td", {}, hash), el("td", {}, badge(i.outcome)), el("td", { class: "reason", text: (i.reason || "") + (i.count > 1 ? ` (${i.count} times, last ${when(i.last_time)})` : "") })));
    }
    if (!ins.instructions.length) it.appendChild(el("tr", {}, el("td", { colspan: "8", class: "muted", text: "no instruction received yet" })));

    const ot = $("#outgoing tbody");
    ot.textContent = "";
    for (const o of out.outgoing) {
      const recs = el("div");
      for (const r of o.records) recs.appendChild(el("div", { class: "mono small", text: `${r.name} · ${bytes(r.size)} · ${r.blake3.slice(0, 16)}…`, title: r.blake3 }));
      if (!o.records.length) recs.appendChild(el("span", { class: "muted", text: o.error ? "error reply (no data)" : "metrics only" }));
      ot.appendChild(el("tr", {}, el("td", { class: "num", text: String(o.seq) }), el("td", { text: when(o.time) }),
        el("td", { class: "num", text: String(o.round_no) }), el("td", { text: o.kind }), el("td", {}, recs), el("td", { text: o.metrics.join(", ") })));
    }
    if (!out.outgoing.length) ot.appendChild(el("tr", {}, el("td", { colspan: "6", class: "muted", text: "nothing has left this site" })));

    const pol = $("#policy");
    pol.textContent = "";
    const rows = Object.entries(site.policy).map(([k, v]) => [k, v === null ? "—" : String(v)]);
    rows.push(["studies", site.studies.join(", ")]);
    pol.appendChild(table(["rule", "value"], rows));
    pol.appendChild(el("h3", { text: "approved task hashes" }));
    for (const h of site.approved_task_hashes) pol.appendChild(el("div", { class: "mono small", text: h }));
    if (!site.approved_task_hashes.length) pol.appendChild(el("p", { class: "muted", text: "none: every task is refused" }));
  }

  function fail(err) { $("main").prepend(el("p", { class: "error", text: `cannot load: ${err.message}` })); }
  load().catch(fail);
  setInterval(() => load().catch(fail), 5000);  // the node keeps writing: refresh every 5 s
})();
