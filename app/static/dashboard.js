// Live dashboard: one WebSocket (/dashboard/ws/) gives a snapshot, then deltas (see app/dashboard.py).
// Positions are re-marked on every price push, so value, leverage and liquidation distances move
// with the market between fills.
(() => {
  "use strict";
  const params = new URLSearchParams(location.search);
  const authToken = params.get("token");  // only needed with READ_AUTH
  const MAX_ROWS = 50;
  const state = { accounts: {}, halt: {}, prices: {}, account: params.get("account"), token: null };
  const $ = (id) => document.getElementById(id);
  const usd = (v) => v == null ? "–" : v.toLocaleString("en-US", { style: "currency", currency: "USD", maximumFractionDigits: 2 });
  const num = (v, d = 4) => v == null ? "–" : Number(v).toLocaleString("en-US", { maximumFractionDigits: d });
  const time = (ms) => { const d = new Date(ms); return isNaN(d) ? "–" : d.toISOString().slice(11, 19); };
  // Event fields reach the page only as text (textContent, Option labels), never as markup: a
  // token or reason written by anyone who can produce to a topic cannot run script here.
  const word = (v) => (typeof v === "string" && /^[A-Za-z_.]{1,40}$/.test(v) ? v : "");  // class names
  function el(tag, cls, ...children) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    for (const c of children) node.append(c instanceof Node ? c : String(c == null ? "" : c));
    return node;
  }
  const td = (content, cls) => el("td", cls, content);
  // A link to a decision's chain (/trace/<id>/), only for an id shaped like a UUID.
  function traceLink(id) {
    if (typeof id !== "string" || !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(id)) return "";
    const a = el("a", "trace", "trace");
    a.href = "/trace/" + id + "/" + (authToken ? "?token=" + encodeURIComponent(authToken) : "");
    a.target = "_blank";
    a.rel = "noopener";
    return a;
  }
  const signed = (v) => el("span", v >= 0 ? "up" : "down", usd(v));
  function fillSelect(sel, values, selected) {
    sel.replaceChildren(...values.map((v) => new Option(v, v, false, v === selected)));
  }

  let chart = null;
  function drawChart() {
    const series = state.prices[state.token] || [];
    const data = [series.map((p) => p[0] / 1000), series.map((p) => p[1])];
    const el = $("chart");
    if (!chart) {
      chart = new uPlot({ width: el.clientWidth || 600, height: 260, legend: { show: false },
        scales: { x: { time: true } },
        axes: [{ stroke: "#8a96a3", grid: { stroke: "#252d36" } }, { stroke: "#8a96a3", grid: { stroke: "#252d36" }, size: 70 }],
        series: [{}, { label: "price", stroke: "#3498db", width: 1.5 }] }, data, el);
    } else {
      chart.setData(data);
    }
    const last = series[series.length - 1];
    $("last").textContent = last ? `${num(last[1], 2)} at ${time(last[0])} UTC` : "";
  }

  function markOf(token, fallback) {
    const s = state.prices[token];
    return s && s.length ? s[s.length - 1][1] : fallback;
  }

  function renderAccount() {
    const names = Object.keys(state.accounts).sort();
    const sel = $("account");
    if (!state.account || !state.accounts[state.account]) state.account = names[0] || state.account;
    if (sel.options.length !== names.length) fillSelect(sel, names, state.account);
    const h = state.halt[state.account];
    $("halt").className = "badge " + (h && h.halted ? "halted" : "ok");
    $("halt").textContent = h && h.halted ? `HALTED: ${h.reason || ""}` : "trading";
    const s = state.accounts[state.account];
    if (!s) return;
    let equity = s.cash, gross = 0, upnl = 0;
    const rows = [];
    for (const [token, p] of Object.entries(s.positions || {}).sort()) {
      const mark = markOf(token, p.mark_price);
      equity += p.size * mark;
      gross += Math.abs(p.size * mark);
      const u = p.size * (mark - p.entry_price);
      upnl += u;
      const dist = p.liquidation_price ? Math.abs(mark - p.liquidation_price) / mark * 100 : null;
      rows.push(el("tr", "", td(token), td(num(p.size, 6), p.size > 0 ? "up" : "down"), td(num(p.entry_price, 2)),
        td(num(mark, 2)), td(signed(u)), td(num(p.liquidation_price, 2)),
        td(dist == null ? "–" : dist.toFixed(2) + " %", dist != null && dist < 10 ? "CRITICAL" : "")));
    }
    if (!rows.length) {
      const none = td("no open positions", "muted");
      none.colSpan = 7;
      rows.push(el("tr", "", none));
    }
    $("positions").tBodies[0].replaceChildren(...rows);
    $("equity").textContent = usd(equity);
    $("cash").textContent = usd(s.cash);
    $("leverage").textContent = equity > 0 ? (gross / equity).toFixed(2) + "×" : "–";
    $("upnl").replaceChildren(signed(upnl));
    $("daily").replaceChildren(signed(s.daily_pnl || 0));
    $("fills").textContent = (s.delta && s.delta.seq) || 0;
  }

  const rowOf = {
    trade: (e) => e.event_type === "position.closed"
      ? [td(time(e.timestamp)), td(e.token), td("closed"), td(num(e.size, 6)), td(signed(e.pnl_usd))]
      : [td(time(e.timestamp)), td(e.token), td(e.side, word(e.side)), td(num(e.filled_amount, 6)),
        td("@ " + num(e.fill_price, 2))],
    decision: (e) => [td(time(e.timestamp)), td(e.token),
      td(e.event_type === "trade.consensus_approved" ? "approved " + e.recommended_action : "failed", word(e.recommended_action)),
      td(num(e.consensus_score, 1)), td((Array.isArray(e.contributing_agents) ? e.contributing_agents : []).join(", ")),
      td(traceLink(e.event_id))],
    signal: (e) => [td(time(e.timestamp)), td(e.token), td(e.action || e.event_type, word(e.action)),
      td(e.score != null ? num(e.score, 1) : ""), td(e.agent || "")],
    alert: (e) => [td(time(e.timestamp)), td(e.account), td(e.event_type, word(e.severity)), td(e.violation_type || ""),
      td(e.token || "")],
  };

  function addRows(kind, events, flash) {
    const tbl = $(kind === "trade" ? "trades" : kind + "s");
    if (!tbl || !rowOf[kind]) return;
    const body = tbl.tBodies[0];
    for (const e of events) {
      const tr = el("tr", "", ...rowOf[kind](e));
      tr.dataset.eventType = e.event_type;
      if (flash) tr.className = "new";
      body.insertBefore(tr, body.firstChild);
    }
    while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
  }

  function renderTokens() {
    const tokens = Object.keys(state.prices).sort();
    if (!state.token || !state.prices[state.token]) state.token = params.get("chart") || tokens[0] || null;
    const sel = $("token");
    if (sel.options.length !== tokens.length) fillSelect(sel, tokens, state.token);
  }

  function onMessage(msg) {
    switch (msg.type) {
      case "snapshot":
        state.accounts = msg.accounts || {};
        state.halt = msg.halt || {};
        state.prices = msg.prices || {};
        for (const kind of Object.keys(rowOf)) {
          const t = $(kind === "trade" ? "trades" : kind + "s");
          if (t) t.tBodies[0].replaceChildren();
          addRows(kind, (msg.recent || {})[kind] || [], false);
        }
        renderTokens(); renderAccount(); drawChart();
        break;
      case "state":
        state.accounts[msg.event.account] = msg.event;
        renderAccount();
        break;
      case "alert":
        addRows("alert", [msg.event], true);
        if (msg.halt) { state.halt[msg.event.account] = msg.halt; renderAccount(); }
        break;
      case "prices":
        for (const [t, points] of Object.entries(msg.points)) {
          const s = state.prices[t] || (state.prices[t] = []);
          for (const p of points) {
            if (s.length && s[s.length - 1][0] === p[0]) s[s.length - 1] = p;
            else if (!s.length || p[0] > s[s.length - 1][0]) s.push(p);
          }
          if (s.length > 900) s.splice(0, s.length - 900);
        }
        renderTokens(); renderAccount(); drawChart();
        break;
      case "trade": case "decision": case "signal":
        addRows(msg.type, [msg.event], true);
        break;
    }
  }

  $("account").onchange = (ev) => { state.account = ev.target.value; renderAccount(); };
  $("token").onchange = (ev) => { state.token = ev.target.value; drawChart(); };
  window.addEventListener("resize", () => chart && chart.setSize({ width: $("chart").clientWidth, height: 260 }));

  let backoff = 500;
  function connect() {
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/dashboard/ws/` +
      (authToken ? `?token=${encodeURIComponent(authToken)}` : "");
    const ws = new WebSocket(url);
    ws.onopen = () => { backoff = 500; $("conn").className = "badge ok"; $("conn").textContent = "live"; };
    ws.onmessage = (ev) => onMessage(JSON.parse(ev.data));
    ws.onclose = () => {
      $("conn").className = "badge off"; $("conn").textContent = "reconnecting…";
      setTimeout(connect, backoff); backoff = Math.min(backoff * 2, 10000);
    };
  }
  connect();
  window.dashboardState = state;  // for tests and the curious
})();
