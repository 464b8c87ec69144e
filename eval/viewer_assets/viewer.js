// csc viewer: renders the JSON in #csc-data. Every piece of data enters the document through
// text nodes (el() below), never as markup, so text from a dialogue cannot run code.
(function () {
  "use strict";
  performance.mark("csc-script-start");
  const DATA = JSON.parse(document.getElementById("csc-data").textContent);
  performance.mark("csc-data-parsed");
  const META = DATA.meta;
  const FW = DATA.framework;
  // The first dialogues come with the page's head so the first screen renders while the
  // browser still reads the rest (#csc-rest, parsed by loadRest() at the end of the page).
  const ITEMS = DATA.items;
  const TOTAL = META.total || ITEMS.length;
  let complete = ITEMS.length >= TOTAL;
  const ZH = META.language === "zh";
  const STRAT = {};
  FW.strategies.forEach(function (s) { STRAT[s.code] = s; });
  const STAGE = {};
  FW.stages.forEach(function (s) { STAGE[s.code] = s; });
  const WHO = ZH ? { s: "客服", c: "客户" } : { s: "Supporter", c: "Customer" };
  const CONTEXTS = DATA.contexts || [];
  const SUPPORTERS = DATA.supporters || [];
  const CRITERIA = DATA.criteria || [];
  const BATCH = 20;
  const STORE_KEY = "csc-review:" + META.key;

  function el(tag, props) {
    const node = document.createElement(tag);
    if (props) {
      for (const k in props) {
        const v = props[k];
        if (v === undefined || v === null || v === false) continue;
        if (k === "className") node.className = v;
        else if (k === "style") node.style.cssText = v;
        else if (k.slice(0, 2) === "on") node.addEventListener(k.slice(2), v);
        else node.setAttribute(k, v === true ? "" : String(v));
      }
    }
    for (let i = 2; i < arguments.length; i++) add(node, arguments[i]);
    return node;
  }
  function add(node, kid) {
    if (kid === undefined || kid === null || kid === false) return;
    if (Array.isArray(kid)) { kid.forEach(function (k) { add(node, k); }); return; }
    node.appendChild(typeof kid === "object" ? kid : document.createTextNode(String(kid)));
  }
  const $ = function (id) { return document.getElementById(id); };

  // ------------------------------------------------------------------ per-item facts
  const turnCounts = {};
  function index(items, offset) {
    items.forEach(function (it, k) { indexItem(it, offset + k); });
  }
  function indexItem(it, i) {
    it._i = i;
    const codes = new Set();
    (it.u || []).forEach(function (u) {
      if (u && u[0] === "s" && u[2]) {
        codes.add(u[2]);
        turnCounts[u[2]] = (turnCounts[u[2]] || 0) + 1;
      }
    });
    it._codes = codes;
  }
  index(ITEMS, 0);
  function searchText(it) {
    if (it._text === undefined) {
      const parts = [it.id, it.t || ""];
      (it.u || []).forEach(function (u) { if (u) parts.push(u[1], u[3] || ""); });
      for (const k in it.x || {}) parts.push(it.x[k]);
      for (const k in it.j || {}) parts.push(it.j[k][1]);
      for (const k in it.e || {}) parts.push(it.e[k]);
      for (const c in it.p || {}) for (const t in it.p[c]) it.p[c][t].forEach(function (r) { parts.push(r[2] || ""); });
      it._text = parts.join("\n").toLowerCase();
    }
    return it._text;
  }

  // ------------------------------------------------------------------ review marks
  function loadReview() {
    try {
      const raw = localStorage.getItem(STORE_KEY);
      if (raw) { const r = JSON.parse(raw); if (r && r.marks) return r; }
    } catch (e) { /* storage off or corrupt: start empty */ }
    return { reviewer: "", marks: {} };
  }
  let REVIEW = loadReview();
  function saveReview() {
    try { localStorage.setItem(STORE_KEY, JSON.stringify(REVIEW)); } catch (e) { /* full */ }
    showProgress();
  }
  function decision(id) {
    const m = REVIEW.marks[id];
    if (!m) return null;
    let all = true;
    for (const c of CRITERIA) {
      if (m.c[c] === "reject") return "reject";
      if (m.c[c] !== "accept") all = false;
    }
    return all ? "accept" : null;
  }
  function reviewState(id) {
    const m = REVIEW.marks[id];
    if (!m || (!Object.keys(m.c).length && !m.note)) return "unreviewed";
    const d = decision(id);
    return d === "accept" ? "accepted" : d === "reject" ? "rejected" : "partial";
  }

  // ------------------------------------------------------------------ filters
  const state = { q: "", topic: "", strategy: "", status: "", judge: "", context: CONTEXTS[0] || "",
    supporter: "", result: "", review: "" };
  let FILTERS = [];
  function counted(key) {
    const n = {};
    ITEMS.forEach(function (it) { const v = it[key]; if (v) n[v] = (n[v] || 0) + 1; });
    return n;
  }
  function defineFilters() {
    FILTERS = [];
    const topics = counted("t");
    if (Object.keys(topics).length > 1) {
      FILTERS.push({ key: "topic", label: "topic", options: [["", "all topics"]].concat(
        Object.keys(topics).sort().map(function (t) { return [t, t + " (" + topics[t] + ")"]; })) });
    }
    const codesSeen = Object.keys(turnCounts);
    if (codesSeen.length) {
      const ordered = FW.strategies.map(function (s) { return s.code; })
        .filter(function (c) { return turnCounts[c]; })
        .concat(codesSeen.filter(function (c) { return !STRAT[c]; }).sort());
      FILTERS.push({ key: "strategy", label: "strategy (gold)", options: [["", "any strategy"]].concat(
        ordered.map(function (c) { return [c, c + " · " + (STRAT[c] ? STRAT[c].name : "unknown")]; })) });
    }
    const statuses = counted("s");
    if (Object.keys(statuses).length) {
      FILTERS.push({ key: "status", label: "kept / rejected", options: [["", "all"]].concat(
        ["kept", "rejected", "dropped", "failed"].filter(function (s) { return statuses[s]; })
          .map(function (s) { return [s, s + " (" + statuses[s] + ")"]; })) });
    }
    if (ITEMS.some(function (it) { return it.j; })) {
      const opts = [["", "any verdict"], ["any-fail", "failed any criterion"], ["all-pass", "passed all"]];
      CRITERIA.forEach(function (c) {
        opts.push(["fail:" + c, "failed: " + c]);
        opts.push(["pass:" + c, "passed: " + c]);
      });
      FILTERS.push({ key: "judge", label: "judge criterion", options: opts });
    }
    if (CONTEXTS.length) {
      FILTERS.push({ key: "context", label: "context", options: CONTEXTS.map(function (c) { return [c, c]; }) });
      if (SUPPORTERS.length > 1) {
        FILTERS.push({ key: "supporter", label: "supporter", options: [["", "every supporter"]].concat(
          SUPPORTERS.map(function (s, i) { return [String(i), s]; })) });
      }
      FILTERS.push({ key: "result", label: "right / wrong strategy", options: [["", "all"],
        ["wrong", "a wrong strategy"], ["right", "all strategies right"], ["error", "an error"]] });
    }
    FILTERS.push({ key: "review", label: "review", reviewOnly: true, options: [["", "all"],
      ["unreviewed", "not reviewed"], ["partial", "partly reviewed"], ["accepted", "accepted"],
      ["rejected", "rejected"]] });
  }
  defineFilters();

  function predRows(it) {
    const byTurn = (it.p && it.p[state.context]) || {};
    const rows = [];
    for (const t in byTurn) byTurn[t].forEach(function (r) {
      if (state.supporter === "" || String(r[0]) === state.supporter) rows.push(r);
    });
    return rows;
  }
  function matches(it, q) {
    if (state.topic && it.t !== state.topic) return false;
    if (state.strategy && !it._codes.has(state.strategy)) return false;
    if (state.status && it.s !== state.status) return false;
    if (state.judge) {
      const j = it.j || {};
      const names = Object.keys(j);
      if (!names.length) return false;
      if (state.judge === "any-fail") { if (names.every(function (c) { return j[c][0]; })) return false; }
      else if (state.judge === "all-pass") { if (!names.every(function (c) { return j[c][0]; })) return false; }
      else {
        const want = state.judge.slice(0, 4) === "pass";
        const c = state.judge.slice(5);
        if (!j[c] || j[c][0] !== want) return false;
      }
    }
    if (state.result) {
      const rows = predRows(it);
      if (state.result === "wrong" && !rows.some(function (r) { return r[3] === false; })) return false;
      if (state.result === "right" && !(rows.length && rows.every(function (r) { return r[3] === true; }))) return false;
      if (state.result === "error" && !rows.some(function (r) { return r[4]; })) return false;
    }
    if (state.review && reviewing() && reviewState(it.id) !== state.review) return false;
    if (q && searchText(it).indexOf(q) < 0) return false;
    return true;
  }

  // ------------------------------------------------------------------ rendering
  function tag(code) {
    if (!code) return null;
    const s = STRAT[code];
    if (!s) return el("span", { className: "tag unknown", title: code }, code);
    return el("span", { className: "tag", style: "background:" + s.colour, title: s.code + ": " + s.definition,
      "data-code": code }, s.name);
  }
  function highlight(text, q) {
    if (!q || !text) return text;
    const lower = text.toLowerCase();
    const out = [];
    let at = 0;
    let hit = lower.indexOf(q);
    while (hit >= 0) {
      out.push(text.slice(at, hit), el("mark", null, text.slice(hit, hit + q.length)));
      at = hit + q.length;
      hit = lower.indexOf(q, at);
    }
    out.push(text.slice(at));
    return out;
  }
  function details(it) {
    const rows = [];
    for (const k in it.x || {}) rows.push(el("dt", null, k), el("dd", null, it.x[k]));
    for (const c in it.j || {}) {
      rows.push(el("dt", null, "judge: " + c + (it.j[c][0] ? " ✓" : " ✗")), el("dd", null, it.j[c][1] || "—"));
    }
    if (!rows.length) return null;
    const keys = Object.keys(it.x || {});
    const label = (keys.length ? keys.join(", ") : "") + (it.j ? (keys.length ? ", " : "") + "judge reasons" : "");
    return el("details", { className: "more" }, el("summary", null, label), el("dl", null, rows));
  }
  function predictions(it, index, q) {
    const rows = ((it.p && it.p[state.context]) || {})[index];
    if (!rows) return null;
    return el("div", { className: "preds" }, rows.map(function (r) {
      const cls = r[3] === true ? "right" : r[3] === false ? "wrong" : "";
      const dim = state.supporter !== "" && String(r[0]) !== state.supporter;
      return el("div", { className: "pred " + cls, style: dim ? "opacity:.45" : null, "data-ok": String(r[3]) },
        el("span", { className: "name" }, SUPPORTERS[r[0]] || "supporter"),
        el("span", { className: "mark" }, r[3] === true ? "✓" : r[3] === false ? "✗" : ""),
        tag(r[1]), r[4] ? el("div", { className: "error" }, r[4]) : highlight(r[2] || "", q));
    }));
  }
  function turns(it, q) {
    const box = el("div", { className: "turns" });
    let stage = null;
    (it.u || []).forEach(function (u, index) {
      if (!u) { box.appendChild(el("div", { className: "turn gap" }, "…")); return; }
      const sup = u[0] === "s";
      const s = sup && u[2] ? STRAT[u[2]] : null;
      let border = null;
      if (s && s.stage && STAGE[s.stage]) {
        border = "border-left-color:" + STAGE[s.stage].colour;
        if (s.stage !== stage) {
          stage = s.stage;
          box.appendChild(el("div", { className: "stage-band", style: "background:" + STAGE[stage].colour },
            STAGE[stage].name));
        }
      }
      box.appendChild(el("div", { className: "turn " + (sup ? "s" : "c"), style: border },
        el("span", { className: "who" }, (WHO[u[0]] || u[0]) + (sup && it.p ? (ZH ? " · 参考" : " · gold") : "")),
        sup ? tag(u[2]) : null,
        highlight(u[1], q), u[3] ? el("div", { className: "policy" }, u[3]) : null));
      const p = predictions(it, String(index), q);
      if (p) box.appendChild(p);
    });
    return box;
  }
  function reviewPanel(it) {
    const m = REVIEW.marks[it.id] || { c: {}, note: "" };
    const panel = el("div", { className: "review" });
    function mark(crit, value) {
      const cur = REVIEW.marks[it.id] || { c: {}, note: "" };
      if (cur.c[crit] === value) delete cur.c[crit]; else cur.c[crit] = value;
      cur.updated = new Date().toISOString();
      REVIEW.marks[it.id] = cur;
      saveReview();
      panel.replaceWith(reviewPanel(it));
      const card = document.querySelector('.card[data-index="' + it._i + '"]');
      if (card) card.setAttribute("data-review", reviewState(it.id));
    }
    CRITERIA.forEach(function (c) {
      const j = it.j && it.j[c];
      panel.appendChild(el("div", { className: "row", "data-criterion": c },
        el("span", { className: "crit" }, c),
        el("span", { className: "judge" }, j ? "judge: " + (j[0] ? "pass" : "fail") : ""),
        el("button", { type: "button", className: "accept" + (m.c[c] === "accept" ? " on" : ""),
          onclick: function () { mark(c, "accept"); } }, "✓ accept"),
        el("button", { type: "button", className: "reject" + (m.c[c] === "reject" ? " on" : ""),
          onclick: function () { mark(c, "reject"); } }, "✗ reject")));
    });
    const d = decision(it.id);
    panel.appendChild(el("div", { className: "row" },
      el("button", { type: "button", className: "accept-all", onclick: function () {
        const cur = REVIEW.marks[it.id] || { c: {}, note: "" };
        CRITERIA.forEach(function (c) { cur.c[c] = "accept"; });
        cur.updated = new Date().toISOString();
        REVIEW.marks[it.id] = cur;
        saveReview();
        panel.replaceWith(reviewPanel(it));
      } }, "accept all"),
      el("span", { className: "decision" }, d === "accept" ? "accepted" : d === "reject" ? "rejected" : "")));
    const note = el("textarea", { placeholder: "note", className: "note-input" });
    note.value = m.note || "";
    note.addEventListener("input", function () {
      const cur = REVIEW.marks[it.id] || { c: {}, note: "" };
      cur.note = note.value;
      cur.updated = new Date().toISOString();
      REVIEW.marks[it.id] = cur;
      saveReview();
    });
    panel.appendChild(note);
    return panel;
  }
  function card(it, q) {
    const head = el("div", { className: "card-head" },
      el("span", { className: "card-id" }, it.id),
      it.t ? el("span", { className: "badge" }, it.t) : null,
      it.s ? el("span", { className: "badge " + it.s }, it.s) : null,
      el("span", { className: "badge" }, (it.u || []).length + " turns"));
    const verdicts = it.j ? el("div", { className: "verdicts" }, Object.keys(it.j).map(function (c) {
      return el("span", { className: "verdict " + (it.j[c][0] ? "pass" : "fail"), title: it.j[c][1] },
        (it.j[c][0] ? "✓ " : "✗ ") + c);
    })) : null;
    const failing = it.j ? Object.keys(it.j).filter(function (c) { return !it.j[c][0] && it.j[c][1]; }) : [];
    const reasons = failing.length ? el("div", { className: "reasons" }, failing.map(function (c) {
      return el("div", null, el("b", null, c + ": "), it.j[c][1]);
    })) : null;
    const policy = it.pc ? el("div", { className: "policy" }, "policy corrections: " +
      Object.keys(it.pc).map(function (k) { return k + " " + it.pc[k]; }).join(", ")) : null;
    const error = it.e ? el("div", { className: "error" }, Object.keys(it.e).map(function (k) {
      return k + ": " + it.e[k] + "\n";
    })) : null;
    return el("article", { className: "card", "data-index": it._i, "data-id": it.id,
      "data-review": reviewState(it.id) },
      head, verdicts, reasons, policy, details(it), error, turns(it, q), reviewing() ? reviewPanel(it) : null);
  }

  // ------------------------------------------------------------------ list, lazily
  let shown = [];
  let rendered = 0;
  let query = "";
  function renderMore() {
    const cards = $("cards");
    const end = Math.min(rendered + BATCH, shown.length);
    const frag = document.createDocumentFragment();
    for (; rendered < end; rendered++) frag.appendChild(card(shown[rendered], query));
    cards.appendChild(frag);
  }
  function fillScreen() {
    // Render batches until the sentinel is below the fold; the observer does the rest.
    let guard = 0;
    while (rendered < shown.length && $("sentinel").getBoundingClientRect().top < innerHeight + 800 && guard++ < 50) {
      renderMore();
    }
  }
  function showCount() {
    const count = $("count");
    const total = complete ? ITEMS.length : TOTAL;
    count.textContent = (shown.length === total ? total : shown.length + " of " + total) +
      (total === 1 ? " dialogue" : " dialogues") +
      (complete ? "" : " (loading…)");
    count.setAttribute("data-shown", shown.length);
    count.setAttribute("data-total", total);
    count.setAttribute("data-complete", complete ? "1" : "0");
  }
  function apply() {
    query = state.q.trim().toLowerCase();
    shown = ITEMS.filter(function (it) { return matches(it, query); });
    rendered = 0;
    $("cards").textContent = "";
    renderMore();
    fillScreen();
    showCount();
    $("empty").hidden = shown.length > 0;
    document.querySelectorAll("#legend .entry").forEach(function (e) {
      e.classList.toggle("active", e.getAttribute("data-code") === state.strategy);
    });
    writeHash();
  }
  new IntersectionObserver(function (entries) {
    if (entries.some(function (e) { return e.isIntersecting; }) && rendered < shown.length) {
      renderMore();
      fillScreen();
    }
  }, { rootMargin: "800px" }).observe($("sentinel"));

  // ------------------------------------------------------------------ state in the URL hash
  const HASH_KEYS = ["q", "topic", "strategy", "status", "judge", "context", "supporter", "result", "review"];
  function readHash() {
    const h = location.hash.replace(/^#/, "");
    if (!h) return false;
    h.split("&").forEach(function (part) {
      const eq = part.indexOf("=");
      if (eq < 0) return;
      const k = decodeURIComponent(part.slice(0, eq));
      if (HASH_KEYS.indexOf(k) >= 0) state[k] = decodeURIComponent(part.slice(eq + 1));
    });
    return true;
  }
  function writeHash() {
    const parts = [];
    HASH_KEYS.forEach(function (k) {
      if (state[k] && !(k === "context" && state[k] === CONTEXTS[0])) {
        parts.push(encodeURIComponent(k) + "=" + encodeURIComponent(state[k]));
      }
    });
    const h = parts.length ? "#" + parts.join("&") : " ";
    history.replaceState(null, "", h === " " ? location.pathname + location.search : h);
  }
  function setFilters(values) {
    HASH_KEYS.forEach(function (k) { if (k !== "q") state[k] = ""; });
    state.context = CONTEXTS[0] || "";
    for (const k in values) state[k] = values[k];
    syncControls();
    apply();
  }

  // ------------------------------------------------------------------ controls
  function reviewing() { return $("review-toggle").checked; }
  function buildFilters() {
    const box = $("filters");
    box.textContent = "";
    FILTERS.forEach(function (f) {
      if (f.reviewOnly && !reviewing()) return;
      const select = el("select", { id: "filter-" + f.key, "data-filter": f.key,
        onchange: function () { state[f.key] = select.value; apply(); } },
        f.options.map(function (o) { return el("option", { value: o[0] }, o[1]); }));
      box.appendChild(el("label", { className: "field" }, f.label, select));
    });
    syncControls();
  }
  function syncControls() {
    FILTERS.forEach(function (f) {
      const s = $("filter-" + f.key);
      if (s) s.value = state[f.key];
    });
    $("search").value = state.q;
  }
  function buildLegend() {
    $("legend-title").textContent = FW.title + " (" + FW.name + ")";
    const box = $("legend");
    box.textContent = "";
    function entry(s) {
      return el("div", { className: "entry", "data-code": s.code, title: s.definition,
        onclick: function () { state.strategy = state.strategy === s.code ? "" : s.code; syncControls(); apply(); } },
        el("span", { className: "tag", style: "background:" + s.colour }, s.code), s.name,
        el("span", { className: "n" }, turnCounts[s.code] || 0));
    }
    FW.stages.forEach(function (st) {
      box.appendChild(el("div", { className: "stage", style: "border-color:" + st.colour }, st.name));
      FW.strategies.filter(function (s) { return s.stage === st.code; }).forEach(function (s) { box.appendChild(entry(s)); });
    });
    const free = FW.strategies.filter(function (s) { return !s.stage || !STAGE[s.stage]; });
    if (free.length) {
      box.appendChild(el("div", { className: "stage", style: "border-color:#999" }, ZH ? "任意阶段" : "any stage"));
      free.forEach(function (s) { box.appendChild(entry(s)); });
    }
  }
  function buildInfo() {
    const rows = [el("dt", null, "source"), el("dd", null, META.source), el("dt", null, "written"),
      el("dd", null, META.generated)];
    for (const k in META.info || {}) {
      const v = META.info[k];
      rows.push(el("dt", null, k), el("dd", null, typeof v === "object" ? JSON.stringify(v) : String(v)));
    }
    $("info").appendChild(el("dl", null, rows));
    (META.notes || []).forEach(function (n) { $("notes").appendChild(el("div", { className: "note" }, n)); });
  }
  function buildReport() {
    const r = DATA.report;
    if (!r) return;
    const body = $("report-body");
    (r.tables || []).forEach(function (t) {
      body.appendChild(el("table", null, el("caption", null, t.title),
        el("thead", null, el("tr", null, t.columns.map(function (c) { return el("th", null, c); }))),
        el("tbody", null, t.rows.map(function (row) {
          return el("tr", null, row.map(function (cell) {
            if (cell && typeof cell === "object") {
              const go = function () { setFilters(cell.filter); $("cards").scrollIntoView(); };
              return el("td", null, el("a", { className: "filter-link", role: "link", tabindex: "0",
                onclick: go, onkeydown: function (e) { if (e.key === "Enter") go(); } }, cell.text));
            }
            return el("td", null, cell);
          }));
        }))));
    });
    (r.images || []).forEach(function (img) { body.appendChild(el("img", { src: img.src, alt: img.title, title: img.title })); });
    $("report").hidden = false;
  }
  function showProgress() {
    const counts = { accepted: 0, rejected: 0, partial: 0 };
    for (const id in REVIEW.marks) { const s = reviewState(id); if (counts[s] !== undefined) counts[s]++; }
    $("review-progress").textContent = counts.accepted + " accepted, " + counts.rejected + " rejected, " +
      counts.partial + " partly reviewed of " + TOTAL;
  }
  function exportReview() {
    const marks = {};
    for (const id in REVIEW.marks) {
      const m = REVIEW.marks[id];
      if (!Object.keys(m.c).length && !m.note) continue;
      marks[id] = { decision: decision(id), criteria: m.c, note: m.note || "", updated: m.updated || null };
    }
    const doc = { format: "csc-review", version: 1, source: META.source, kind: META.kind, key: META.key,
      framework: FW.name, criteria: CRITERIA, reviewer: REVIEW.reviewer || "",
      exported: new Date().toISOString(), marks: marks };
    const blob = new Blob([JSON.stringify(doc, null, 1)], { type: "application/json" });
    const a = el("a", { href: URL.createObjectURL(blob), download: "review.json" });
    document.body.appendChild(a);
    a.click();
    a.remove();
  }

  $("title").textContent = META.title + " · " + META.kind;
  $("search").addEventListener("input", function () {
    clearTimeout(this._t);
    const input = this;
    this._t = setTimeout(function () { state.q = input.value; apply(); }, 150);
  });
  $("review-toggle").addEventListener("change", function () {
    $("review-bar").hidden = !reviewing();
    try { localStorage.setItem("csc-review-mode", reviewing() ? "1" : ""); } catch (e) { /* off */ }
    if (!reviewing()) state.review = "";
    buildFilters();
    apply();
  });
  $("reviewer").value = REVIEW.reviewer || "";
  $("reviewer").addEventListener("input", function () { REVIEW.reviewer = this.value; saveReview(); });
  $("export-review").addEventListener("click", exportReview);
  $("clear-review").addEventListener("click", function () {
    if (!confirm("Remove every review mark of this page from this browser?")) return;
    REVIEW = { reviewer: REVIEW.reviewer, marks: {} };
    saveReview();
    apply();
  });
  window.addEventListener("hashchange", function () { if (readHash()) { syncControls(); apply(); } });
  try { $("review-toggle").checked = localStorage.getItem("csc-review-mode") === "1"; } catch (e) { /* off */ }
  $("review-bar").hidden = !reviewing();
  readHash();
  buildLegend();
  buildInfo();
  buildReport();
  buildFilters();
  showProgress();
  apply();
  if (complete) document.body.setAttribute("data-complete", "1");
  requestAnimationFrame(function () {
    performance.mark("csc-first-screen");
    document.body.setAttribute("data-ready", "1");
  });
  function loadRest() {
    // The remaining dialogues: index them, then refresh the controls that count over all of them.
    const node = document.getElementById("csc-rest");
    if (complete || !node) return;
    const rest = JSON.parse(node.textContent);
    index(rest, ITEMS.length);
    Array.prototype.push.apply(ITEMS, rest);
    complete = true;
    defineFilters();
    buildFilters();
    buildLegend();
    showProgress();
    const untouched = HASH_KEYS.every(function (k) { return !state[k] || (k === "context" && state[k] === CONTEXTS[0]); });
    if (untouched) {  // keep what is on screen (and the scroll position); the list just grows
      shown = ITEMS.slice();
      showCount();
      fillScreen();
    } else {
      apply();
    }
    performance.mark("csc-all-loaded");
    document.body.setAttribute("data-complete", "1");
  }
  // For tests and scripts: the page's data and filters.
  window.cscViewer = { data: DATA, state: state, setFilters: setFilters, loadRest: loadRest,
    shown: function () { return shown.length; } };
})();
