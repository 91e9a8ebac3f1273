/* TradeGuard console. Vanilla JavaScript, no build step, no external resources.
 *
 * Everything shown comes from the sidecar's HTTP API (the JSON transcoding of its gRPC services): the same routes,
 * token rules and audit trail as grpcurl or curl. The token the operator pastes is kept in sessionStorage (this
 * tab only) and sent as `Authorization: Bearer ...`; it never goes into a URL. Data is put into the page with
 * textContent / DOM nodes only, never as HTML.
 */
"use strict";

(function () {
  const TOKEN_KEY = "tradeguard.console.token";
  const WARN_AT = 80; // % of a limit: amber
  const OVER_AT = 100; // % of a limit: red
  const HISTORY_MAX_PAGES = 10; // x 1000 rows for the chart
  const SVG_NS = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);

  // ---- DOM helpers -----------------------------------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) el.setAttribute(k, String(v));
    }
    for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return el;
  }

  function replace(el, ...children) {
    el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  }

  function table(headers, rows) {
    return h("table", {}, h("thead", {}, h("tr", {}, headers.map((t) => h("th", { text: t })))), h("tbody", {}, rows));
  }

  // ---- formatting ------------------------------------------------------------------------------------------------

  const num = (v, digits = 2) =>
    v === undefined || v === null || Number.isNaN(Number(v)) ? "—"
      : Number(v).toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  const pct = (v, digits = 2) => (v === undefined || v === null ? "—" : num(v, digits) + " %");
  const stateName = (s) => String(s || "TRADING_STATE_UNSPECIFIED").replace("TRADING_STATE_", "");
  const codeName = (c) => String(c || "").replace("DECISION_CODE_", "");

  function when(ts) {
    if (!ts) return "";
    const d = new Date(ts);
    return Number.isNaN(d.getTime()) ? String(ts) : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  function stateBadge(state) {
    const name = stateName(state);
    return h("span", { class: "state " + name, "data-state": name, text: name });
  }

  function until(st) {
    if (stateName(st.trading_state) === "ACTIVE") return "";
    return st.paused_until ? when(st.paused_until) : "until resumed";
  }

  // ---- token and API ---------------------------------------------------------------------------------------------

  const token = () => sessionStorage.getItem(TOKEN_KEY) || "";

  function showTokenStatus() {
    $("token-status").textContent = token() ? "token set (kept in this tab only)" : "no token";
  }

  class ApiError extends Error {
    constructor(httpStatus, message, body) {
      super(message);
      this.httpStatus = httpStatus;
      this.body = body;
    }

    get refused() {
      return this.httpStatus === 401 || this.httpStatus === 403;
    }

    explain() {
      if (this.httpStatus === 401) {
        return `Refused (401 UNAUTHENTICATED): ${this.message}. Paste a valid token above ` +
          "(the trader token reads a trader; the admin token reads everything and acts).";
      }
      if (this.httpStatus === 403) {
        return `Refused (403 PERMISSION_DENIED): ${this.message}. This needs the admin token.`;
      }
      if (this.httpStatus === 0) return this.message;
      return `Error ${this.httpStatus}: ${this.message}`;
    }
  }

  function authHeaders(extra) {
    const headers = Object.assign({ Accept: "application/json" }, extra || {});
    const t = token();
    if (t) headers.Authorization = "Bearer " + t;
    return headers;
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== undefined && v !== null && v !== "") q.append(k, String(v));
    }
    const text = q.toString();
    return text ? "?" + text : "";
  }

  async function api(method, path, params, body) {
    const init = { method, headers: authHeaders(), cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path + query(params), init);
    } catch (e) {
      throw new ApiError(0, "The sidecar cannot be reached (" + e.message + ")", null);
    }
    const text = await res.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (e) {
      data = null;
    }
    if (!res.ok) throw new ApiError(res.status, (data && data.message) || text || res.statusText, data);
    return data;
  }

  async function allPages(path, params, key, maxPages) {
    const out = [];
    let pageToken = "";
    for (let i = 0; i < (maxPages || 20); i++) {
      const data = await api("GET", path, Object.assign({}, params, { page_token: pageToken }));
      out.push(...(data[key] || []));
      pageToken = data.next_page_token || "";
      if (!pageToken) break;
    }
    return out;
  }

  // ---- messages --------------------------------------------------------------------------------------------------

  function banner(text, kind) {
    const el = $("banner");
    el.textContent = text;
    el.className = "banner" + (kind ? " " + kind : "");
    el.hidden = !text;
  }

  function errorBox(err) {
    const text = err instanceof ApiError ? err.explain() : String(err && err.message ? err.message : err);
    return h("div", { class: "result refused", role: "alert", "data-http-status": err && err.httpStatus, text });
  }

  // ---- tabs ------------------------------------------------------------------------------------------------------

  let currentView = "accounts";

  function showView(name) {
    currentView = name;
    for (const b of document.querySelectorAll(".tabs button")) b.classList.toggle("active", b.dataset.view === name);
    for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== "view-" + name;
  }

  // ---- limits: each one's use, from the state and the account's configuration --------------------------------------

  function levelOf(usedPct) {
    if (usedPct === null || usedPct === undefined || !Number.isFinite(usedPct)) return "none";
    if (usedPct >= OVER_AT) return "over";
    if (usedPct >= WARN_AT) return "warn";
    return "ok";
  }

  function symbolConfig(cfg, symbol) {
    return (cfg && cfg.symbol_configs || []).find((c) => c.symbol === symbol) || {};
  }

  function notional(p) {
    return Math.abs(Number(p.quantity || 0)) * Number(p.mark_price || p.entry_price || 0);
  }

  /** The limits of the five kinds the console shows, as {key, name, value, limit, unit, used} (used: % of limit). */
  function limitUse(st, cfg) {
    const equity = Number(st.current_equity || 0);
    const out = [];
    const add = (key, name, value, limit, unit, detail) => {
      const has = limit !== undefined && limit !== null && Number(limit) > 0;
      out.push({ key, name, value, limit: has ? Number(limit) : null, unit, detail: detail || "",
        used: has ? (value / Number(limit)) * 100 : null });
    };
    const c = cfg || {};
    add("daily_loss", "Daily loss", Math.max(0, -Number(st.daily_pnl_pct || 0)), c.daily_max_drawdown_percentage, "%",
      "loss since the start of the UTC day, % of day-start equity");
    add("drawdown", "Drawdown", Number(st.drawdown_pct || 0), c.max_drawdown_percentage, "%",
      "drawdown from peak equity");
    // Position: the position nearest its limit (a symbol's override, else the account's).
    let worst = null;
    for (const p of st.positions || []) {
      const limit = symbolConfig(cfg, p.symbol).max_position_size_percentage ?? c.max_position_size_percentage;
      const value = equity > 0 ? (notional(p) / equity) * 100 : 0;
      const used = limit ? (value / limit) * 100 : -1;
      if (worst === null || used > worst.used) worst = { value, limit, used, symbol: p.symbol };
    }
    add("position", "Position", worst ? worst.value : 0, worst ? worst.limit : c.max_position_size_percentage, "%",
      worst ? "largest position notional, % of equity (" + worst.symbol + ")" : "no open position");
    // Exposure: same-direction notional per correlation group (all symbols form one group when none is configured),
    // positions plus the unfilled part of pending orders that add exposure (listed by GetRiskState; ListRiskStates
    // gives only their count).
    const groups = (c.correlation_groups || []).length ? c.correlation_groups.map((g) => new Set(g.symbols || []))
      : [null];
    const legs = (st.positions || []).map((p) => ({ symbol: p.symbol, side: p.side, notional: notional(p) }))
      .concat((st.pending_orders || []).filter((o) => !o.reducing).map((o) => ({ symbol: o.symbol, side: o.side,
        notional: Math.max(0, Number(o.quantity || 0) - Number(o.filled_quantity || 0)) * Number(o.price || 0) })));
    let exposure = 0;
    for (const g of groups) {
      let long = 0;
      let short = 0;
      for (const leg of legs) {
        if (g && !g.has(leg.symbol)) continue;
        if (leg.side === "SIDE_SELL") short += leg.notional;
        else long += leg.notional;
      }
      exposure = Math.max(exposure, equity > 0 ? (Math.max(long, short) / equity) * 100 : 0);
    }
    add("exposure", "Exposure", exposure, c.max_correlated_exposure_percentage, "%",
      "same-direction exposure of a correlation group, % of equity");
    add("open_orders", "Open orders", Number(st.pending_order_count || 0), c.max_open_orders, "",
      "orders allowed and not finished");
    return out;
  }

  /** A limit's use as a table cell; `cfg`: the configuration (null: the settings' defaults, undefined: unknown). */
  function limitCell(u, cfg) {
    const level = levelOf(u.used);
    const attrs = { class: "num lvl-" + level, "data-limit": u.key, "data-level": level, title: u.detail };
    if (u.limit === null) {
      return h("td", attrs, cfg ? "no limit" : (cfg === null ? "default" : "—"));
    }
    const v = u.unit === "%" ? num(u.value) + "/" + num(u.limit) + " %" : num(u.value, 0) + "/" + num(u.limit, 0);
    return h("td", attrs, h("strong", { text: num(u.used, 0) + " %" }), " ", h("span", { class: "muted", text: v }));
  }

  // ---- configurations (read through the API, cached per account) --------------------------------------------------

  const configCache = new Map(); // account -> {configs, error}

  async function accountConfigs(account, fresh) {
    if (!fresh && configCache.has(account)) return configCache.get(account);
    let entry;
    try {
      entry = { configs: (await api("GET", `/v1/admin/accounts/${encodeURIComponent(account)}/configs`)).configs || [] };
    } catch (err) {
      entry = { configs: [], error: err };
    }
    configCache.set(account, entry);
    return entry;
  }

  /** The configuration in force for a state: its config_id, else the active one; null = the settings' defaults. */
  function configFor(entry, st) {
    if (!entry || entry.error) return undefined; // unknown (not readable)
    if (st.config_id) return entry.configs.find((c) => c.config_id === st.config_id) || null;
    return entry.configs.find((c) => c.is_active !== false) || null;
  }

  function configLabel(entry, cfg, st) {
    if (cfg === undefined) return "configuration not readable with this token";
    if (cfg === null) return st.config_id ? `configuration ${st.config_id} not found`
      : "settings' defaults (not readable over the API)";
    return "configuration " + cfg.config_id;
  }

  // ---- (a) accounts ----------------------------------------------------------------------------------------------

  let shownAccounts = [];
  let accountsBusy = false;

  async function loadAccounts(accounts) {
    shownAccounts = accounts;
    if (accountsBusy) return;
    accountsBusy = true;
    try {
      const boxes = [];
      for (const account of accounts) boxes.push(await accountBox(account));
      replace($("accounts-out"), boxes.length ? boxes : h("p", { class: "muted", text: "No account." }));
    } finally {
      accountsBusy = false;
    }
  }

  async function accountBox(account) {
    const box = h("div", { class: "account", "data-account": account });
    const killButton = h("button", { type: "button", "data-kill-account": account, text: "Kill switch…",
      onclick: () => prefillKill("account", account, "") });
    const head = h("h2", {}, "Account ", h("code", { text: account }), killButton);
    box.append(head);
    let entries;
    try {
      entries = await allPages("/v1/admin/risk-states", { account_id: account, page_size: 1000 }, "entries", 10);
    } catch (err) {
      box.append(errorBox(err));
      if (err instanceof ApiError && err.refused) {
        box.append(h("p", { class: "hint", text: "With the trader token, open one trader in the Trader view." }));
      }
      return box;
    }
    const cfgEntry = await accountConfigs(account, true);
    if (cfgEntry.error) box.append(errorBox(cfgEntry.error));
    const rows = entries.map((e) => {
      const st = e.state || {};
      const cfg = configFor(cfgEntry, st);
      const uses = limitUse(st, cfg);
      return h("tr", { class: "row-link", "data-trader": st.trader_id, title: "open " + st.trader_id,
        onclick: () => openTrader(account, st.trader_id) },
      h("td", {}, h("code", { text: st.trader_id })),
      h("td", {}, stateBadge(st.trading_state)),
      h("td", { class: "reason", text: st.pause_reason || "" }),
      h("td", { class: "until", text: until(st) }),
      h("td", { class: "num equity", text: st.equity_reported ? num(st.current_equity) : "no report" }),
      uses.map((u) => limitCell(u, cfg)),
      h("td", { class: "owner", title: e.local ? "its live state is on the sidecar that answered" : "stored state",
        text: e.owner_sidecar ? e.owner_sidecar + (e.local ? " (this one)" : "") : (e.local ? "this sidecar" : "none") }),
      h("td", { class: "num", text: num(e.age_seconds, 0) + " s" }));
    });
    box.append(rows.length
      ? table(["Trader", "State", "Why", "Until", "Equity", "Daily loss", "Drawdown", "Position", "Exposure",
        "Open orders", "Owner sidecar", "Age"], rows)
      : h("p", { class: "muted", text: "No trader in this account." }));
    const cfgNote = cfgEntry.error ? "" : (cfgEntry.configs.length
      ? "Configurations: " + cfgEntry.configs.map((c) => c.config_id + (c.is_active !== false ? " (active)" : ""))
        .join(", ")
      : "No configuration: the settings' defaults apply (not readable over the API, so no % is shown).");
    if (cfgNote) box.append(h("p", { class: "hint", text: cfgNote }));
    return box;
  }

  async function allAccounts() {
    try {
      const data = await api("GET", "/v1/admin/bindings");
      const accounts = [...new Set((data.bindings || []).map((b) => b.account_id))].sort();
      $("accounts-input").value = accounts.join(", ");
      await loadAccounts(accounts);
    } catch (err) {
      replace($("accounts-out"), errorBox(err));
    }
  }

  // ---- (b) one trader --------------------------------------------------------------------------------------------

  const T = { account: "", trader: "", points: [], livePoints: 0, events: [], breakerEvents: [], config: undefined, cfgEntry: null,
    state: null, gen: 0, ctrl: null, historyError: null, breakerNames: new Map() };

  async function openTrader(account, trader) {
    showView("trader");
    $("trader-account").value = account;
    $("trader-id").value = trader;
    stopWatch();
    const gen = T.gen; // a newer openTrader (another click) supersedes this one after any await
    Object.assign(T, { account, trader, points: [], livePoints: 0, events: [], breakerEvents: [], config: undefined,
      cfgEntry: null, state: null, historyError: null });
    replace($("trader-out"), h("p", { class: "muted", text: "Loading " + trader + "…" }));
    $("trader-detail").hidden = true;
    let st;
    try {
      st = (await api("GET", "/v1/risk/state", { trader_id: trader, account_id: account })).state || {};
    } catch (err) {
      if (gen === T.gen) replace($("trader-out"), errorBox(err));
      return;
    }
    if (gen !== T.gen) return;
    T.state = st;
    replace($("trader-out"));
    $("trader-detail").hidden = false;
    T.cfgEntry = await accountConfigs(account, true);
    T.config = configFor(T.cfgEntry, st);
    await loadHistory();
    if (gen !== T.gen) return;
    renderTrader();
    void startWatch(account, trader);
  }

  async function loadHistory() {
    try {
      const rows = await allPages("/v1/admin/history", { trader_id: T.trader, account_id: T.account, page_size: 1000 },
        "entries", HISTORY_MAX_PAGES);
      T.points = rows.filter((r) => r.state && r.state.equity_reported).map((r) => pointOf(r.state, r.recorded_at,
        r.reason));
      T.events = rows.map((r) => ({ at: r.recorded_at, kind: "history", state: r.state, text: r.reason || "",
        trace: r.trace_id || "" }));
      T.historyError = null;
      T.livePoints = 0;
    } catch (err) {
      T.historyError = err;
    }
    try {
      const breakers = await api("GET", "/v1/admin/breakers", { account_id: T.account });
      T.breakerNames = new Map((breakers.breakers || []).map((b) => [b.id, b.name]));
    } catch (err) {
      T.breakerNames = new Map();
    }
    T.breakerEvents = await breakerEventsOf(T.account, T.trader);
  }

  async function breakerEventsOf(account, trader) {
    // ListBreakerEvents of a whole account (an empty breaker_id) has no HTTP route (its path names a breaker), so
    // the events are read per breaker of the account and merged.
    const out = [];
    for (const id of T.breakerNames.keys()) {
      try {
        const events = await allPages(`/v1/admin/breakers/${encodeURIComponent(id)}/events`,
          { account_id: account, page_size: 1000 }, "events", 3);
        out.push(...events.filter((e) => !trader || e.trader_id === trader));
      } catch (err) {
        break;
      }
    }
    out.sort((a, b) => Date.parse(a.timestamp) - Date.parse(b.timestamp));
    return out;
  }

  function pointOf(st, at, reason) {
    return { t: Date.parse(at || st.updated_at) || Date.now(), equity: Number(st.current_equity || 0),
      dd: Number(st.drawdown_pct || 0), state: stateName(st.trading_state), reason: reason || "",
      pauseReason: st.pause_reason || "" };
  }

  function card(label, value, cls, attrs) {
    return h("div", Object.assign({ class: "card " + (cls || "") }, attrs || {}), h("div", { class: "label", text: label }),
      h("div", { class: "value" }, value));
  }

  function renderTrader() {
    const st = T.state || {};
    replace($("trader-cards"),
      card("State", stateBadge(st.trading_state), "", { id: "trader-state" }),
      card("Equity", num(st.current_equity), "", { id: "trader-equity" }),
      card("Peak equity", num(st.peak_equity)),
      card("Drawdown", pct(st.drawdown_pct), "", { id: "trader-drawdown" }),
      card("Daily PnL", num(st.daily_pnl) + " (" + pct(st.daily_pnl_pct) + ")", "", { id: "trader-daily" }),
      card("Weekly PnL", pct(st.weekly_pnl_pct)),
      card("Monthly PnL", pct(st.monthly_pnl_pct)),
      card("Losses in a row", String(st.consecutive_losses || 0)),
      card("Paused until", until(st) || "—", "", { id: "trader-until" }),
      card("Why", st.pause_reason || "—", "wide", { id: "trader-why" }),
      card("Last equity report", when(st.last_equity_at) || "none"));
    const uses = limitUse(st, T.config);
    replace($("trader-limits"),
      h("p", { class: "hint", text: configLabel(T.cfgEntry, T.config, st) }),
      table(["Limit", "Use", "Measure"], uses.map((u) => h("tr", {}, h("td", { text: u.name }),
        limitCell(u, T.config), h("td", { class: "muted", text: u.detail })))));
    renderChecks(st, uses);
    renderPositions(st);
    renderChart();
    renderEvents();
  }

  function checkStatus(u, cfg) {
    if (u.used !== null) return u.used >= OVER_AT ? "FAIL" : "PASS";
    if (cfg) return "SKIPPED"; // not configured: CanTrade skips it
    return cfg === null ? "default limit (not readable)" : "unknown (configuration not readable)";
  }

  function renderChecks(st, uses) {
    const rows = uses.map((u) => h("tr", { "data-check": u.key }, h("td", { text: u.name }),
      h("td", { class: "lvl-" + levelOf(u.used), text: checkStatus(u, T.config) }),
      h("td", { class: "num", text: u.unit === "%" ? pct(u.value) : num(u.value, 0) }),
      h("td", { class: "num", text: u.limit === null ? "—" : (u.unit === "%" ? pct(u.limit) : num(u.limit, 0)) })));
    const decisions = T.events.filter((e) => /breach|pause|resum|halt|restore|limit|LIMIT/i.test(e.text)).slice(-8)
      .reverse().map((e) => h("tr", {}, h("td", { text: when(e.at) }), h("td", {}, stateBadge(e.state &&
        e.state.trading_state)), h("td", { text: e.text })));
    replace($("trader-checks"),
      st.pause_code && st.pause_code !== "DECISION_CODE_UNSPECIFIED"
        ? h("p", {}, "Paused by ", h("strong", { text: codeName(st.pause_code) }), ": ", st.pause_reason || "") : null,
      table(["Check", "Now", "Measured", "Limit"], rows),
      h("p", { class: "hint", text: "The checks as CanTrade would measure them now (state and configuration); the " +
        "decisions that changed the state, from the history:" }),
      decisions.length ? table(["When", "State", "Reason"], decisions)
        : h("p", { class: "muted", text: T.historyError ? "History not readable: " +
          T.historyError.explain() : "No breach or pause in the history shown." }));
  }

  function renderPositions(st) {
    const positions = (st.positions || []).map((p) => h("tr", {}, h("td", { text: p.symbol }),
      h("td", { text: p.exchange || "" }), h("td", { text: String(p.side || "").replace("SIDE_", "") }),
      h("td", { class: "num", text: num(p.quantity, 4) }), h("td", { class: "num", text: num(p.entry_price) }),
      h("td", { class: "num", text: num(p.mark_price) }), h("td", { class: "num", text: num(notional(p)) })));
    const pending = (st.pending_orders || []).map((o) => h("tr", {}, h("td", { text: o.client_order_id }),
      h("td", { text: o.symbol }), h("td", { text: String(o.side || "").replace("SIDE_", "") }),
      h("td", { class: "num", text: num(o.quantity, 4) }), h("td", { class: "num", text: num(o.filled_quantity, 4) }),
      h("td", { text: String(o.status || "").replace("ORDER_STATUS_", "") }), h("td", { text: when(o.expires_at) })));
    replace($("trader-positions"),
      positions.length ? table(["Symbol", "Exchange", "Side", "Quantity", "Entry", "Mark", "Notional"], positions)
        : h("p", { class: "muted", text: "No open position." }),
      pending.length ? table(["Order", "Symbol", "Side", "Quantity", "Filled", "Status", "Expires"], pending)
        : h("p", { class: "muted", text: (st.pending_order_count ? st.pending_order_count + " pending orders."
          : "No pending order.") }));
  }

  function renderEvents() {
    const items = [];
    for (const e of T.events) items.push({ at: e.at, kind: e.kind, state: e.state, text: e.text });
    for (const b of T.breakerEvents) {
      items.push({ at: b.timestamp, kind: "breaker", state: null,
        text: `${T.breakerNames.get(b.breaker_id) || b.breaker_id}: ${b.action_taken}` +
          (b.shadow ? " (shadow)" : "") + " " + JSON.stringify(b.triggered_values || {}) });
    }
    items.sort((a, b) => Date.parse(b.at) - Date.parse(a.at));
    const rows = items.slice(0, 60).map((e) => h("tr", { "data-kind": e.kind }, h("td", { text: when(e.at) }),
      h("td", { text: e.kind }), h("td", {}, e.state ? stateBadge(e.state.trading_state) : ""),
      h("td", { class: "num", text: e.state ? num(e.state.current_equity) : "" }), h("td", { text: e.text })));
    replace($("trader-events"), T.historyError ? errorBox(T.historyError) : null,
      rows.length ? table(["When", "Kind", "State", "Equity", "What"], rows)
        : h("p", { class: "muted", text: "No event yet." }));
  }

  // ---- the chart (inline SVG) ------------------------------------------------------------------------------------

  function renderChart() {
    const box = $("chart-box");
    const pts = T.points;
    $("chart-note").textContent = T.historyError ? "(history needs the admin token)"
      : `(${pts.length} points: ${pts.length - T.livePoints} from the history, ${T.livePoints} live)`;
    if (!pts.length) {
      replace(box, T.historyError ? errorBox(T.historyError) : h("p", { class: "muted", text: "No history yet." }));
      return;
    }
    const W = 900;
    const H = 330;
    const L = 70;
    const R = 880;
    const EQ_TOP = 14;
    const EQ_BOTTOM = 200;
    const DD_TOP = 228;
    const DD_BOTTOM = 300;
    const t0 = Math.min(...pts.map((p) => p.t), ...T.breakerEvents.map((b) => Date.parse(b.timestamp) || Infinity));
    const t1 = Math.max(...pts.map((p) => p.t));
    const span = Math.max(t1 - t0, 1);
    let lo = Math.min(...pts.map((p) => p.equity));
    let hi = Math.max(...pts.map((p) => p.equity));
    if (hi - lo < 1e-9) {
      lo -= 1;
      hi += 1;
    }
    const pad = (hi - lo) * 0.06;
    lo -= pad;
    hi += pad;
    const ddMax = Math.max(1, ...pts.map((p) => p.dd));
    const x = (t) => L + ((t - t0) / span) * (R - L);
    const yEq = (v) => EQ_BOTTOM - ((v - lo) / (hi - lo)) * (EQ_BOTTOM - EQ_TOP);
    const yDd = (v) => DD_TOP + (v / ddMax) * (DD_BOTTOM - DD_TOP);
    const f = (v) => v.toFixed(1);
    const path = (yOf) => pts.map((p, i) => (i ? "L" : "M") + f(x(p.t)) + "," + f(yOf(p))).join(" ");

    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", id: "trader-chart",
      "aria-label": "equity and drawdown of " + T.trader });
    svg.append(s("title", {}, `Equity and drawdown of ${T.trader}`));
    // pause bands, then grid, lines and marks
    let pauseStart = null;
    const marks = [];
    pts.forEach((p, i) => {
      const prev = i ? pts[i - 1].state : "ACTIVE";
      if (p.state !== "ACTIVE" && prev === "ACTIVE") {
        pauseStart = p;
        marks.push(s("line", { class: "pause-mark", x1: f(x(p.t)), x2: f(x(p.t)), y1: EQ_TOP, y2: DD_BOTTOM,
          "data-at": new Date(p.t).toISOString() }, s("title", {}, `pause (${p.state}): ${p.pauseReason || p.reason}`)));
      } else if (p.state === "ACTIVE" && prev !== "ACTIVE" && i) {
        if (pauseStart) {
          svg.append(s("rect", { class: "pause-band", x: f(x(pauseStart.t)), y: EQ_TOP,
            width: f(Math.max(1, x(p.t) - x(pauseStart.t))), height: DD_BOTTOM - EQ_TOP }));
        }
        pauseStart = null;
        marks.push(s("line", { class: "resume-mark", x1: f(x(p.t)), x2: f(x(p.t)), y1: EQ_TOP, y2: DD_BOTTOM },
          s("title", {}, "resume: " + p.reason)));
      }
    });
    if (pauseStart) {
      svg.append(s("rect", { class: "pause-band", x: f(x(pauseStart.t)), y: EQ_TOP,
        width: f(Math.max(1, R - x(pauseStart.t))), height: DD_BOTTOM - EQ_TOP }));
    }
    for (const [v, y] of [[hi - pad, yEq(hi - pad)], [lo + pad, yEq(lo + pad)]]) {
      svg.append(s("line", { class: "grid", x1: L, x2: R, y1: f(y), y2: f(y) }));
      svg.append(s("text", { class: "axis-label", x: L - 6, y: f(y + 4), "text-anchor": "end" }, num(v)));
    }
    svg.append(s("line", { class: "grid", x1: L, x2: R, y1: DD_TOP, y2: DD_TOP }));
    svg.append(s("text", { class: "axis-label", x: L - 6, y: DD_TOP + 4, "text-anchor": "end" }, "0 %"));
    svg.append(s("text", { class: "axis-label", x: L - 6, y: DD_BOTTOM + 4, "text-anchor": "end" }, num(ddMax, 1) +
      " %"));
    svg.append(s("text", { class: "axis-label", x: L, y: H - 8 }, when(t0)));
    svg.append(s("text", { class: "axis-label", x: R, y: H - 8, "text-anchor": "end" }, when(t1)));
    svg.append(s("path", { class: "equity-line", id: "equity-line", d: path((p) => yEq(p.equity)),
      "data-points": pts.length }));
    svg.append(s("path", { class: "drawdown-line", id: "drawdown-line", d: path((p) => yDd(p.dd)),
      "data-points": pts.length }));
    for (const m of marks) svg.append(m);
    for (const b of T.breakerEvents) {
      const t = Date.parse(b.timestamp);
      if (!Number.isFinite(t)) continue;
      const bx = x(Math.min(Math.max(t, t0), t1));
      svg.append(s("path", { class: "breaker-mark", d: `M${f(bx - 5)},${EQ_TOP} L${f(bx + 5)},${EQ_TOP} ` +
        `L${f(bx)},${EQ_TOP + 9} Z`, "data-breaker-id": b.breaker_id },
      s("title", {}, `breaker ${T.breakerNames.get(b.breaker_id) || b.breaker_id}: ${b.action_taken}`)));
    }
    replace(box, svg);
  }

  // ---- (e) live: WatchRiskState over fetch() with a streaming body (EventSource cannot send a token) --------------

  function setLive(kind, text) {
    const el = $("live-status");
    el.className = "live " + kind;
    el.textContent = text;
  }

  function stopWatch() {
    T.gen += 1;
    T.live = false;
    if (T.ctrl) T.ctrl.abort();
    T.ctrl = null;
    setLive("off", "live: off");
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function startWatch(account, trader) {
    const gen = T.gen;
    let delay = 1000;
    while (gen === T.gen) {
      const ctrl = new AbortController();
      T.ctrl = ctrl;
      try {
        const res = await fetch("/v1/risk/watch" + query({ trader_id: trader, account_id: account }),
          { headers: authHeaders({ Accept: "text/event-stream" }), cache: "no-store", credentials: "omit",
            signal: ctrl.signal });
        if (!res.ok) {
          let body = null;
          try {
            body = await res.json();
          } catch (e) {
            body = null;
          }
          const err = new ApiError(res.status, (body && body.message) || res.statusText, body);
          if (err.refused || res.status === 400 || res.status === 404) {
            setLive("off", "live: refused");
            banner("Live updates: " + err.explain());
            return;
          }
          throw err;
        }
        setLive("on", "live: " + trader);
        T.live = true;
        delay = 1000;
        await readEvents(res.body, gen);
      } catch (err) {
        if (ctrl.signal.aborted || gen !== T.gen) return;
      }
      if (gen !== T.gen) return;
      T.live = false;
      setLive("retry", `live: reconnecting in ${Math.round(delay / 1000)} s`);
      await sleep(delay);
      delay = Math.min(delay * 2, 30000);
    }
  }

  async function readEvents(body, gen) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done || gen !== T.gen) return;
      buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let kind = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (!line || line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") kind = val;
          else if (field === "data") data.push(val);
        }
        if (data.length) onLiveEvent(kind, JSON.parse(data.join("\n")));
      }
    }
  }

  function onLiveEvent(kind, msg) {
    if (kind === "error") {
      banner("Live updates stopped: " + (msg.message || JSON.stringify(msg)));
      return;
    }
    const st = msg.state;
    if (!st) return;
    T.state = st;
    const reason = msg.reason || "update";
    if (reason !== "initial") {
      const at = st.updated_at || new Date().toISOString();
      if (st.equity_reported) {
        T.points.push(pointOf(st, at, reason));
        T.livePoints += 1;
      }
      T.events.push({ at, kind: "live", state: st, text: reason + (st.pause_reason ? ": " + st.pause_reason : "") });
      for (const b of msg.breaker_events || []) T.breakerEvents.push(b);
    }
    window.tradeguardConsole.liveUpdates += 1;
    renderTrader();
    if (shownAccounts.includes(T.account) && currentView === "accounts") void loadAccounts(shownAccounts);
  }

  // ---- (c) breakers and their events -----------------------------------------------------------------------------

  async function loadBreakers(account) {
    const out = $("breakers-out");
    replace(out, h("p", { class: "muted", text: "Loading…" }));
    let breakers;
    try {
      breakers = (await api("GET", "/v1/admin/breakers", { account_id: account })).breakers || [];
    } catch (err) {
      replace(out, errorBox(err));
      return;
    }
    const rows = breakers.map((b) => h("tr", { "data-breaker": b.name },
      h("td", {}, h("code", { text: b.name })), h("td", { text: b.description || "" }), h("td", { text: b.condition }),
      h("td", {}, h("code", { text: JSON.stringify(b.parameters || {}) })), h("td", { text: b.action }),
      h("td", { text: ((b.symbols || []).join(", ") || "all symbols") + " / " +
        ((b.exchanges || []).join(", ") || "all exchanges") }),
      h("td", { text: b.enabled === false ? "disabled" : "enabled" }),
      h("td", {}, h("button", { type: "button", text: b.enabled === false ? "Enable…" : "Disable…",
        onclick: () => toggleBreaker(account, b) }))));
    const names = new Map(breakers.map((b) => [b.id, b.name]));
    T.breakerNames = new Map([...T.breakerNames, ...names]);
    const events = [];
    for (const b of breakers) {
      try {
        events.push(...await allPages(`/v1/admin/breakers/${encodeURIComponent(b.id)}/events`, { page_size: 1000 },
          "events", 3));
      } catch (err) {
        replace(out, errorBox(err));
        return;
      }
    }
    events.sort((a, b) => Date.parse(b.timestamp) - Date.parse(a.timestamp));
    const eventRows = events.slice(0, 200).map((e) => h("tr", {}, h("td", { text: when(e.timestamp) }),
      h("td", { text: names.get(e.breaker_id) || e.breaker_id }), h("td", { text: e.trader_id || "" }),
      h("td", { text: e.action_taken + (e.shadow ? " (shadow)" : "") }),
      h("td", {}, h("code", { text: JSON.stringify(e.triggered_values || {}) })),
      h("td", {}, h("code", { text: JSON.stringify(e.action_result || {}) }))));
    replace(out,
      h("h2", { text: `Breakers of ${account}` }),
      rows.length ? table(["Name", "Description", "Condition", "Parameters", "Action", "Scope", "Enabled", ""], rows)
        : h("p", { class: "muted", text: "No breaker." }),
      h("h2", { text: "Events (newest first)" }),
      h("div", { id: "breaker-events" }, eventRows.length
        ? table(["When", "Breaker", "Trader", "Action", "Triggered values", "Result"], eventRows)
        : h("p", { class: "muted", text: "No event." })));
  }

  async function toggleBreaker(account, b) {
    const enable = b.enabled === false;
    const ok = await confirmAction(`${enable ? "Enable" : "Disable"} breaker ${b.name}?`,
      `Account ${account}. ${enable ? "EnableBreaker" : "DisableBreaker"} (admin token).`, "");
    if (!ok) return;
    try {
      await api("POST", `/v1/admin/breakers/${encodeURIComponent(b.id)}/${enable ? "enable" : "disable"}`);
      banner("");
    } catch (err) {
      banner(err instanceof ApiError ? err.explain() : String(err));
    }
    await loadBreakers(account);
  }

  // ---- (c) configurations ----------------------------------------------------------------------------------------

  let editing = null; // {account, isNew}

  async function loadConfigs(account) {
    const out = $("configs-out");
    replace(out, h("p", { class: "muted", text: "Loading…" }));
    const entry = await accountConfigs(account, true);
    if (entry.error) {
      replace(out, errorBox(entry.error));
      return;
    }
    const rows = entry.configs.map((c) => h("tr", { "data-config": c.config_id },
      h("td", {}, h("code", { text: c.config_id })), h("td", { text: c.is_active !== false ? "active" : "" }),
      h("td", { class: "num", text: pct(c.daily_max_drawdown_percentage) }),
      h("td", { class: "num", text: pct(c.max_drawdown_percentage) }),
      h("td", { class: "num", text: pct(c.max_position_size_percentage) }),
      h("td", { class: "num", text: pct(c.max_correlated_exposure_percentage) }),
      h("td", { class: "num", text: c.max_open_orders ?? "—" }),
      h("td", { class: "num", text: c.stop_trading_minutes ?? "—" }),
      h("td", { text: when(c.updated_at) }),
      h("td", {}, h("button", { type: "button", text: "View / edit", onclick: () => editConfig(account, c, false) }))));
    replace(out, rows.length
      ? table(["Config", "Active", "Daily loss", "Drawdown", "Position", "Exposure", "Open orders", "Stop (min)",
        "Updated", ""], rows)
      : h("p", { class: "muted", text: "No configuration: the settings' defaults apply." }));
  }

  function editConfig(account, cfg, isNew) {
    editing = { account, isNew };
    const copy = Object.assign({}, cfg);
    delete copy.created_at;
    delete copy.updated_at;
    $("config-editor-title").textContent = isNew ? `New configuration of ${account}`
      : `Configuration ${cfg.config_id} of ${account}`;
    $("config-json").value = JSON.stringify(copy, null, 2);
    $("config-editor").hidden = false;
  }

  async function saveConfig() {
    let cfg;
    try {
      cfg = JSON.parse($("config-json").value);
    } catch (err) {
      banner("The configuration is not valid JSON: " + err.message);
      return;
    }
    if (!cfg || typeof cfg !== "object" || !cfg.account_id || !cfg.config_id) {
      banner("The configuration needs account_id and config_id.");
      return;
    }
    const ok = await confirmAction(`Save configuration ${cfg.config_id} of ${cfg.account_id}?`,
      "SaveConfig replaces the whole configuration (admin token); an active one applies at once.", "");
    if (!ok) return;
    try {
      const saved = await api("POST", "/v1/admin/configs", {}, cfg);
      banner(`Saved configuration ${saved.config.config_id}${saved.created ? " (created)" : ""}.`, "info");
      configCache.delete(cfg.account_id);
      $("config-editor").hidden = true;
      await loadConfigs(cfg.account_id);
    } catch (err) {
      banner(err instanceof ApiError ? err.explain() : String(err));
    }
  }

  // ---- (d) the kill switch ---------------------------------------------------------------------------------------

  let confirmResolve = null;

  function confirmAction(title, text, reason) {
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    $("confirm-reason").textContent = reason ? "Reason: " + reason : "";
    const dialog = $("confirm");
    return new Promise((resolve) => {
      confirmResolve = resolve;
      dialog.showModal();
      $("confirm-cancel").focus();
    });
  }

  function closeConfirm(answer) {
    const dialog = $("confirm");
    if (dialog.open) dialog.close();
    if (confirmResolve) {
      const resolve = confirmResolve;
      confirmResolve = null;
      resolve(answer);
    }
  }

  function killScope() {
    return document.querySelector("input[name=scope]:checked").value;
  }

  function prefillKill(scope, account, trader) {
    showView("kill");
    for (const r of document.querySelectorAll("input[name=scope]")) r.checked = r.value === scope;
    $("kill-account").value = account || "";
    $("kill-trader").value = trader || "";
    syncKillFields();
    $("kill-reason").focus();
  }

  function syncKillFields() {
    const scope = killScope();
    $("kill-account").disabled = scope === "all";
    $("kill-trader").disabled = scope !== "trader";
  }

  function killTarget() {
    const scope = killScope();
    const account = $("kill-account").value.trim();
    const trader = $("kill-trader").value.trim();
    if (scope === "all") return { scope, body: { all_accounts: true }, what: "EVERY account (the whole deployment)" };
    if (!account) throw new Error("Account: required");
    if (scope === "account") {
      return { scope, body: { account_id: account },
        what: `every trader of account ${account} (those that appear later too)` };
    }
    if (!trader) throw new Error("Trader: required");
    return { scope, body: { account_id: account, trader_id: trader }, what: `trader ${trader} of account ${account}` };
  }

  function killResult(ok, text, detail) {
    replace($("kill-out"), h("div", { class: "result " + (ok ? "ok" : "refused"), role: ok ? "status" : "alert",
      id: "kill-result", "data-ok": ok ? "true" : "false" }, h("div", { text }),
    detail ? h("pre", { class: "json", text: JSON.stringify(detail, null, 2) }) : null));
  }

  async function pause() {
    let target;
    try {
      target = killTarget();
    } catch (err) {
      killResult(false, err.message);
      return;
    }
    const reason = $("kill-reason").value.trim();
    if (!reason) {
      killResult(false, "Reason: required (it goes to the audit trail).");
      $("kill-reason").focus();
      return;
    }
    const minutes = $("kill-minutes").value.trim();
    if (minutes && !(Number(minutes) >= 0 && Number.isInteger(Number(minutes)))) {
      killResult(false, "For (minutes): a whole number of minutes, or empty for until resumed.");
      return;
    }
    const stateValue = $("kill-state").value;
    const body = Object.assign({}, target.body, { trading_state: stateValue, reason });
    if (minutes && Number(minutes) > 0) body.duration = `${Number(minutes) * 60}s`;
    const how = `${stateName(stateValue)} ${minutes && Number(minutes) > 0 ? "for " + minutes + " minutes"
      : "until resumed"}`;
    const ok = await confirmAction("Pause trading?", `PauseTrading: ${target.what} → ${how}.`, reason);
    if (!ok) {
      killResult(false, "Cancelled: nothing was paused.");
      return;
    }
    try {
      const reply = await api("POST", "/v1/admin/pause-trading", {}, body);
      killResult(true, `Paused ${target.what}: ${how}.`, reply);
      await refreshAfterAction();
    } catch (err) {
      killResult(false, err instanceof ApiError ? err.explain() : String(err));
    }
  }

  async function resume() {
    let target;
    try {
      target = killTarget();
    } catch (err) {
      killResult(false, err.message);
      return;
    }
    const ok = await confirmAction("Resume trading?", `ResumeTrading: ${target.what}.`,
      $("kill-reason").value.trim() ? "(ResumeTrading takes no reason: the history names the caller.)" : "");
    if (!ok) {
      killResult(false, "Cancelled: nothing was resumed.");
      return;
    }
    try {
      const reply = await api("POST", "/v1/admin/resume-trading", {}, target.body);
      killResult(true, `Resumed ${target.what}.`, reply);
      await refreshAfterAction();
    } catch (err) {
      killResult(false, err instanceof ApiError ? err.explain() : String(err));
    }
  }

  async function refreshAfterAction() {
    if (shownAccounts.length) await loadAccounts(shownAccounts);
    if (T.trader) {
      try {
        T.state = (await api("GET", "/v1/risk/state", { trader_id: T.trader, account_id: T.account })).state;
        await loadHistory();
        renderTrader();
      } catch (err) {
        void err;
      }
    }
  }

  // ---- wiring ----------------------------------------------------------------------------------------------------

  /** A new (or no) token: cached reads are dropped and the open trader's stream reconnects with it. */
  function tokenChanged() {
    configCache.clear();
    showTokenStatus();
    if (T.trader && T.gen) {
      stopWatch();
      void startWatch(T.account, T.trader);
    }
  }

  const splitIds = (text) => text.split(/[\s,]+/).map((x) => x.trim()).filter(Boolean);

  function init() {
    window.tradeguardConsole = { liveUpdates: 0 };
    showTokenStatus();
    $("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const value = $("token").value.trim();
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      $("token").value = "";
      tokenChanged();
      banner("");
    });
    $("token-forget").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      tokenChanged();
    });
    for (const b of document.querySelectorAll(".tabs button")) {
      b.addEventListener("click", () => showView(b.dataset.view));
    }
    $("accounts-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      void loadAccounts(splitIds($("accounts-input").value));
    });
    $("accounts-all").addEventListener("click", () => void allAccounts());
    setInterval(() => {
      if (currentView === "accounts" && $("accounts-auto").checked && shownAccounts.length && !accountsBusy &&
        !$("confirm").open) {
        void loadAccounts(shownAccounts);
      }
    }, 5000);
    $("trader-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const account = $("trader-account").value.trim();
      const trader = $("trader-id").value.trim();
      if (!account || !trader) {
        replace($("trader-out"), errorBox(new Error("Account and Trader: both required")));
        return;
      }
      void openTrader(account, trader);
    });
    $("trader-kill").addEventListener("click", () => prefillKill("trader", $("trader-account").value.trim(),
      $("trader-id").value.trim()));
    $("breakers-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const account = $("breakers-account").value.trim();
      if (account) void loadBreakers(account);
    });
    $("configs-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const account = $("configs-account").value.trim();
      if (account) void loadConfigs(account);
    });
    $("configs-new").addEventListener("click", () => {
      const account = $("configs-account").value.trim();
      editConfig(account, { account_id: account, config_id: "", is_active: true, daily_max_drawdown_percentage: 5,
        max_drawdown_percentage: 20, stop_trading_minutes: 30 }, true);
    });
    $("config-save").addEventListener("click", () => void saveConfig());
    $("config-cancel").addEventListener("click", () => {
      $("config-editor").hidden = true;
    });
    for (const r of document.querySelectorAll("input[name=scope]")) r.addEventListener("change", syncKillFields);
    syncKillFields();
    $("kill-form").addEventListener("submit", (ev) => ev.preventDefault());
    $("kill-pause").addEventListener("click", () => void pause());
    $("kill-resume").addEventListener("click", () => void resume());
    $("confirm-ok").addEventListener("click", () => closeConfirm(true));
    $("confirm-cancel").addEventListener("click", () => closeConfirm(false));
    $("confirm").addEventListener("cancel", () => closeConfirm(false));
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
