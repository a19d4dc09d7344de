// Shared by every dashboard page: the API key, calls to the REST API, safe DOM building,
// formatting, and a server-sent-events reader that sends the API key and Last-Event-ID.
//
// Data from the API only ever reaches the page through textContent and attributes, never
// innerHTML, so a job name such as <img onerror=...> stays text.
"use strict";

(function () {
  const KEY = "spartan_key";
  const COOKIE_AGE_S = 30 * 24 * 3600;

  function storedKey() {
    try {
      return window.localStorage.getItem(KEY) || "";
    } catch (_err) {
      return "";
    }
  }

  function writeCookie(value, maxAge) {
    const secure = window.location.protocol === "https:" ? "; Secure" : "";
    document.cookie =
      `${KEY}=${encodeURIComponent(value)}; Path=/ui; Max-Age=${maxAge}; SameSite=Strict${secure}`;
  }

  function setKey(value) {
    window.localStorage.setItem(KEY, value);
    writeCookie(value, COOKIE_AGE_S);
  }

  function clearKey() {
    window.localStorage.removeItem(KEY);
    writeCookie("", 0);
  }

  function hasKeyCookie() {
    return document.cookie.split(";").some((c) => c.trim().startsWith(`${KEY}=`) && c.trim().length > KEY.length + 1);
  }

  function headers(extra) {
    const out = Object.assign({ Accept: "application/json" }, extra || {});
    const key = storedKey();
    if (key) out.Authorization = `Bearer ${key}`;
    return out;
  }

  class ApiError extends Error {
    constructor(status, body) {
      const detail = (body && Array.isArray(body.detail)) ? body.detail : [];
      const text = detail.length
        ? detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ")
        : `HTTP ${status}`;
      super(text);
      this.status = status;
      this.body = body;
    }
  }

  function toLogin() {
    window.location.assign(`/ui/login?next=${encodeURIComponent(window.location.pathname + window.location.search)}`);
  }

  // fetch a JSON endpoint of the REST API with the API key; throws ApiError on 4xx/5xx.
  async function api(path, options) {
    const opts = options || {};
    const init = { method: opts.method || "GET", headers: headers(opts.headers) };
    if (opts.body !== undefined) {
      init.body = JSON.stringify(opts.body);
      init.headers["Content-Type"] = "application/json";
    }
    const response = await fetch(path, init);
    let body = null;
    try {
      body = await response.json();
    } catch (_err) {
      body = null;
    }
    if (response.status === 401 && document.body.dataset.auth === "on" && !opts.noRedirect) {
      toLogin();
    }
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  // el("td", {class: "num", text: "12%"}, [children]): text is set with textContent.
  function el(tag, props, children) {
    const node = document.createElement(tag);
    const p = props || {};
    for (const [name, value] of Object.entries(p)) {
      if (value === undefined || value === null) continue;
      if (name === "text") node.textContent = String(value);
      else if (name === "class") node.className = value;
      else node.setAttribute(name, String(value));
    }
    for (const child of children || []) if (child) node.appendChild(child);
    return node;
  }

  function isNum(v) {
    return typeof v === "number" && Number.isFinite(v);
  }

  function pct(v, digits) {
    return isNum(v) ? `${(v * 100).toFixed(digits === undefined ? 1 : digits)}%` : "-";
  }

  function num(v, digits) {
    if (!isNum(v)) return "-";
    if (Math.abs(v) >= 1e15) return v.toExponential(3);
    return v.toLocaleString("en-US", { maximumFractionDigits: digits === undefined ? 3 : digits });
  }

  function modelName(spec) {
    const m = (spec && spec.model) || {};
    return `${m.source || "?"}/${m.name || "?"}`;
  }

  function sig(v) {
    return String(Number((v * 100).toPrecision(4)));
  }

  // The same words as api/ui/views.py target_text.
  function targetText(spec) {
    const sp = (spec && spec.sparsity) || {};
    const parts = [];
    if (sp.nm) parts.push(`${sp.nm[0]}:${sp.nm[1]}`);
    if (isNum(sp.sparsity)) parts.push(`${sig(sp.sparsity)}% sparse`);
    else if (isNum(sp.cost_fraction)) {
      parts.push(`${sig(sp.cost_fraction)}% ${(spec.cost_model && spec.cost_model.name) || "params"}`);
    }
    const b = sp.block_shape;
    if (b && !(b[0] === 1 && b[1] === 1)) parts.push(`${b[0]}x${b[1]} blocks`);
    return parts.join(", ") || "-";
  }

  // The same fields as api/ui/views.py job_summary, from a JobPublic.
  function jobSummary(job) {
    const final = (job.metrics && job.metrics.final) || {};
    const progress = job.progress || {};
    const pick = (k, alt) => (final[k] !== undefined ? final[k] : progress[alt || k]);
    const created = (job.created_at || "").replace("T", " ").replace(/(\.\d+)?(Z|\+00:00)$/, "");
    return {
      id: job.id,
      name: job.name || "",
      status: job.status,
      phase: progress.phase,
      model: modelName(job.spec),
      target: targetText(job.spec),
      accuracy: pct(pick("top1", "accuracy")),
      sparsity: pct(pick("sparsity")),
      cost_fraction: pct(pick("cost_fraction")),
      created: created.slice(0, 19),
    };
  }

  function setBadge(node, status) {
    if (!node) return;
    node.textContent = status;
    node.className = node.className.replace(/status-\S+/g, "").trim() + ` status-${status}`;
  }

  // Server-sent events over fetch (EventSource cannot send an Authorization header).
  // Reconnects after a dropped connection with Last-Event-ID; stops after an `end` event.
  function streamEvents(url, handlers) {
    let lastId = handlers.lastEventId;
    let stopped = false;
    let controller = null;
    const state = (s) => handlers.onState && handlers.onState(s);

    async function connect() {
      controller = new AbortController();
      const h = headers({ Accept: "text/event-stream" });
      if (lastId !== undefined && lastId !== null && lastId !== "") h["Last-Event-ID"] = String(lastId);
      const response = await fetch(url, { headers: h, signal: controller.signal });
      if (response.status === 401 && document.body.dataset.auth === "on") {
        toLogin();
        return true;
      }
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      state("live");
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      let event = { type: "message", data: [], id: null };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return false;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.search(/\r?\n/)) >= 0) {
          const line = buffer.slice(0, cut);
          buffer = buffer.slice(cut + (buffer[cut] === "\r" ? 2 : 1));
          if (line === "") {
            if (event.data.length) {
              if (event.id !== null) lastId = event.id;
              let data = event.data.join("\n");
              try {
                data = JSON.parse(data);
              } catch (_err) {
                /* plain text data */
              }
              handlers.onEvent(event.type, data, event.id);
              if (event.type === "end") return true;
            }
            event = { type: "message", data: [], id: null };
            continue;
          }
          if (line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? "" : line.slice(colon + 1);
          if (val.startsWith(" ")) val = val.slice(1);
          if (field === "event") event.type = val;
          else if (field === "data") event.data.push(val);
          else if (field === "id") event.id = val;
        }
      }
    }

    (async function loop() {
      let delay = 1000;
      while (!stopped) {
        try {
          if (await connect()) {
            state("ended");
            return;
          }
          delay = 1000;
        } catch (_err) {
          if (stopped) return;
          state("reconnecting…");
        }
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 15000);
      }
    })();

    return {
      stop() {
        stopped = true;
        if (controller) controller.abort();
      },
    };
  }

  const palette = ["#4f46e5", "#0d9488", "#d97706", "#e11d48", "#0284c7", "#7c3aed", "#64748b"];

  function chartDefaults() {
    if (!window.Chart) return;
    const C = window.Chart;
    C.defaults.font.family = getComputedStyle(document.body).fontFamily;
    C.defaults.font.size = 11;
    C.defaults.color = "#475569";
    C.defaults.borderColor = "#e2e8f0";
    C.defaults.animation = false;
    C.defaults.maintainAspectRatio = false;
    C.defaults.plugins.legend.labels.boxWidth = 12;
  }

  document.addEventListener("DOMContentLoaded", () => {
    chartDefaults();
    // Keep the page cookie in step with the stored key (the server renders pages by it).
    if (document.body.dataset.auth === "on" && storedKey() && !hasKeyCookie()) writeCookie(storedKey(), COOKIE_AGE_S);
    const out = document.getElementById("sign-out");
    if (out) {
      out.addEventListener("click", () => {
        clearKey();
        window.location.assign("/ui/login");
      });
    }
  });

  window.Spartan = {
    api, ApiError, el, headers, pct, num, isNum, jobSummary, modelName, targetText, setBadge,
    streamEvents, storedKey, setKey, clearKey, palette, toLogin,
  };
})();
