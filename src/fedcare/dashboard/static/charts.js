// fedcare charts: small interactive SVG line charts (no library, no network).
// FedChart.line(container, {title, series: [{name, color, points: [[x, y], ...], dashed}]})
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22"];
  const MAX_MARKERS = 300; // per series: beyond this only the line is drawn

  function svg(tag, attrs, parent) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (parent) parent.appendChild(node);
    return node;
  }

  function niceTicks(lo, hi, n) {
    if (!(hi > lo)) { const pad = Math.abs(lo) * 0.05 || 0.5; lo -= pad; hi += pad; }
    const raw = (hi - lo) / Math.max(1, n);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const start = Math.floor(lo / step) * step;
    const ticks = [];
    for (let v = start; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
    if (ticks[ticks.length - 1] < hi) ticks.push(Number((start + step * ticks.length).toPrecision(12)));
    return ticks;
  }

  function fmt(v) {
    const a = Math.abs(v);
    if (a < 1e-12) return "0";
    if (a >= 1e9) return (v / 1e9).toFixed(2) + "G";
    if (a >= 1e6) return (v / 1e6).toFixed(2) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
    if (a >= 100 || Number.isInteger(v)) return String(Math.round(v * 100) / 100);
    return v.toPrecision(3);
  }

  function line(container, opts) {
    const W = 560, H = 280, L = 56, R = 14, T = 14, B = 34;
    container.textContent = "";
    container.classList.add("chart");
    const head = document.createElement("h3");
    head.textContent = opts.title;
    container.appendChild(head);
    const series = opts.series.filter((s) => s.points.length);
    const xs = series.flatMap((s) => s.points.map((p) => p[0]));
    const ys = series.flatMap((s) => s.points.map((p) => p[1]));
    if (!xs.length) { const p = document.createElement("p"); p.className = "muted"; p.textContent = "no data yet"; container.appendChild(p); return; }
    const xt = niceTicks(Math.min(...xs), Math.max(...xs), 6).filter((v) => Number.isInteger(v));
    const yt = niceTicks(Math.min(...ys), Math.max(...ys), 5);
    const x0 = Math.min(Math.min(...xs), xt[0]), x1 = Math.max(Math.max(...xs), xt[xt.length - 1]);
    const y0 = yt[0], y1 = yt[yt.length - 1];
    const sx = (x) => L + (x1 === x0 ? (W - L - R) / 2 : ((x - x0) / (x1 - x0)) * (W - L - R));
    const sy = (y) => T + (1 - (y - y0) / (y1 - y0 || 1)) * (H - T - B);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": opts.title });
    container.appendChild(root);
    for (const v of yt) {
      svg("line", { x1: L, x2: W - R, y1: sy(v), y2: sy(v), class: "gridline" }, root);
      svg("text", { x: L - 6, y: sy(v) + 4, class: "tick", "text-anchor": "end" }, root).textContent = fmt(v);
    }
    for (const v of xt) {
      if (v < x0 || v > x1) continue;
      svg("text", { x: sx(v), y: H - B + 16, class: "tick", "text-anchor": "middle" }, root).textContent = String(v);
    }
    svg("text", { x: (L + W - R) / 2, y: H - 4, class: "axis", "text-anchor": "middle" }, root).textContent = "round";
    svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axisline" }, root);
    svg("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axisline" }, root);
    const groups = new Map();
    series.forEach((s, i) => {
      const color = s.color || PALETTE[i % PALETTE.length];
      const g = svg("g", { class: "series", "data-site": s.name }, root);
      svg("polyline", {
        points: s.points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" "),
        fill: "none", stroke: color, "stroke-width": s.dashed ? 2 : 1.6, "stroke-dasharray": s.dashed ? "5 3" : "none",
      }, g);
      if (!s.dashed && s.points.length <= MAX_MARKERS) {
        for (const p of s.points) {
          const c = svg("circle", { cx: sx(p[0]).toFixed(1), cy: sy(p[1]).toFixed(1), r: 2.6, fill: color,
            class: "pt", "data-site": s.name, "data-round": p[0], "data-value": p[1] }, g);
          svg("title", {}, c).textContent = `${s.name} · round ${p[0]}: ${fmt(p[1])}`;
        }
      }
      groups.set(s.name, { g, color, s });
    });
    // hover: a cursor line and the value of every visible series at the nearest round
    const cursor = svg("line", { x1: 0, x2: 0, y1: T, y2: H - B, class: "cursor", visibility: "hidden" }, root);
    const tip = document.createElement("div");
    tip.className = "tip";
    tip.hidden = true;
    container.appendChild(tip);
    const rounds = [...new Set(xs)].sort((a, b) => a - b);
    const overlay = svg("rect", { x: L, y: T, width: W - L - R, height: H - T - B, class: "overlay" }, root);
    overlay.addEventListener("mousemove", (ev) => {
      const box = root.getBoundingClientRect();
      const px = ((ev.clientX - box.left) / box.width) * W;
      const xv = x0 + ((px - L) / (W - L - R)) * (x1 - x0);
      let best = rounds[0];
      for (const r of rounds) if (Math.abs(r - xv) < Math.abs(best - xv)) best = r;
      cursor.setAttribute("x1", sx(best)); cursor.setAttribute("x2", sx(best));
      cursor.setAttribute("visibility", "visible");
      tip.textContent = "";
      const title = document.createElement("b");
      title.textContent = `round ${best}`;
      tip.appendChild(title);
      for (const { g, color, s } of groups.values()) {
        if (g.classList.contains("off")) continue;
        const p = s.points.find((q) => q[0] === best);
        if (!p) continue;
        const row = document.createElement("div");
        const sw = document.createElement("span"); sw.className = "swatch"; sw.style.background = color;
        row.appendChild(sw);
        row.appendChild(document.createTextNode(`${s.name}: ${fmt(p[1])}`));
        tip.appendChild(row);
      }
      tip.hidden = false;
      tip.style.left = `${Math.min(box.width - 160, ev.clientX - box.left + 14)}px`;
      tip.style.top = `${ev.clientY - box.top + 30}px`;
    });
    overlay.addEventListener("mouseleave", () => { cursor.setAttribute("visibility", "hidden"); tip.hidden = true; });
    // legend: click a site to hide or show its curve
    const legend = document.createElement("div");
    legend.className = "legend";
    for (const [name, { g, color }] of groups) {
      const b = document.createElement("button");
      b.type = "button";
      b.dataset.site = name;
      const sw = document.createElement("span"); sw.className = "swatch"; sw.style.background = color;
      b.appendChild(sw);
      b.appendChild(document.createTextNode(name));
      b.addEventListener("click", () => { g.classList.toggle("off"); b.classList.toggle("off"); });
      legend.appendChild(b);
    }
    container.appendChild(legend);
  }

  window.FedChart = { line, palette: PALETTE, fmt };
})();
