// audiofind web page: plain JS, no build step, no third-party code. Talks only to this server's /api.
// One file on purpose (no bundler): search and results, waveforms with region selection, playback,
// keyboard, the address bar (query, filters, mode and sort live in it), collections and drag-out.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const el = {
    form: $("search-form"), q: $("q"), minDur: $("min-duration"), maxDur: $("max-duration"),
    folder: $("folder"), folderList: $("folder-list"), count: $("count"), clear: $("clear-filters"),
    exampleButton: $("example-button"), exampleFile: $("example-file"), results: $("results"),
    message: $("message"), empty: $("empty"), status: $("library-status"), context: $("context"),
    contextText: $("context-text"), contextClose: $("context-close"), overlay: $("drop-overlay"),
    player: $("player"), tokenDialog: $("token-dialog"), tokenForm: $("token-form"), tokenInput: $("token-input"),
    mode: $("mode"), rate: $("sample-rate"), channels: $("channels"), sort: $("sort"), loop: $("loop"),
    autoplay: $("autoplay"), volume: $("volume"), stop: $("stop"), view: $("view-toggle"),
    collections: $("collections"), newCollection: $("new-collection"), indexing: $("indexing"),
    roots: $("library-roots"), contextActions: $("context-actions"), exportZip: $("export-zip"),
    exportCsv: $("export-csv"), deleteCollection: $("delete-collection"), collectDialog: $("collect-dialog"),
    collectForm: $("collect-form"), collectSelect: $("collect-select"), collectNew: $("collect-new"),
    collectWhat: $("collect-what"), collectCancel: $("collect-cancel"),
  };

  const DEBOUNCE_MS = 250;
  const ICON_PLAY = '<svg viewBox="0 0 16 16" aria-hidden="true"><path d="M4 2.5v11l9.5-5.5z"/></svg>';
  const ICON_COPY = '<svg viewBox="0 0 16 16" aria-hidden="true"><rect x="5" y="5" width="8.5" height="8.5" rx="1.5"/><path d="M3 10.5V3.5A1 1 0 0 1 4 2.5h6.5"/></svg>';
  const ICON_PAUSE = '<svg viewBox="0 0 16 16" aria-hidden="true"><path d="M3.5 2.5h3v11h-3zM9.5 2.5h3v11h-3z"/></svg>';

  const state = {
    token: null,
    seq: 0,               // id of the newest request; older responses are dropped
    controller: null,     // aborts the request in flight when a newer one starts
    debounce: 0,
    mode: { kind: "text" }, // or {kind: "similar", id, name} or {kind: "upload", file}
    results: [],
    selected: -1,
    playingId: null,
    waves: new Map(),     // clip id -> {min, max, peak} (or a pending Promise)
    rows: new Map(),      // clip id -> {li, canvas, button}
    regions: new Map(),   // clip id -> {start, end} in seconds, selected on the waveform
    stopAt: null,         // {id, start, end} while a region is auditioned
    favourites: new Set(), // clip ids in the built-in favourites collection
    collections: [],      // [{name, count, builtin}]
    collectFor: null,     // the result the collect dialog adds
    lastUrlQuery: null,   // the q of the last address written, to fold typing into one history entry
    restoring: false,     // applying an address (load, back/forward): do not push it again
  };
  const DEFAULT_MODE = "hybrid";

  // ---------------------------------------------------------------- talking to the server

  function readToken() {
    const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (m) {
      const token = decodeURIComponent(m[1]);
      sessionStorage.setItem("audiofind-token", token);
      history.replaceState(null, "", location.pathname + location.search); // keep it out of the address bar
      return token;
    }
    return sessionStorage.getItem("audiofind-token");
  }

  class ApiError extends Error {
    constructor(status, body) {
      super(body && body.error ? body.error : `HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    if (state.token) headers.set("Authorization", `Bearer ${state.token}`);
    const response = await fetch(path, { ...options, headers, credentials: "same-origin" });
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    if (response.status === 401) askToken();
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  function askToken() {
    if (!el.tokenDialog.open) el.tokenDialog.showModal();
  }

  async function startSession() {
    if (!state.token) return;
    try { await api("/api/session", { method: "POST" }); } catch (_) { /* a 401 opens the dialog */ }
  }

  function describeError(err) {
    if (err.name === "AbortError") return null;
    if (err instanceof ApiError) {
      const d = err.body && err.body.detail;
      let extra = "";
      if (Array.isArray(d)) extra = d.map((x) => `${(x.loc || []).slice(-1)[0]}: ${x.msg}`).join("; ");
      else if (typeof d === "string") extra = d;
      return extra ? `${err.message} (${extra})` : err.message;
    }
    return `Cannot reach the server: ${err.message}`;
  }

  // ---------------------------------------------------------------- library status and folders

  async function loadStatus() {
    try {
      const s = await api("/api/status");
      const hours = s.audio_hours >= 1 ? `${s.audio_hours.toFixed(1)} h` : `${Math.round(s.audio_hours * 60)} min`;
      const built = s.built_at ? new Date(s.built_at).toLocaleString() : "never";
      el.status.textContent = `${s.clips.toLocaleString()} clips · ${hours} of audio · updated ${built}`;
      el.status.title = `model ${s.model_id} · ${s.index_kind} index · ${s.index_dir}`;
      const roots = s.roots || [];
      el.roots.textContent = `${roots.length} root${roots.length === 1 ? "" : "s"}: ${roots.map((r) => r.split("/").filter(Boolean).pop() || r).join(", ")}`;
      el.roots.title = roots.join("\n");
      const run = s.indexing || {};
      el.indexing.hidden = !run.running;
      if (run.running) {
        const p = run.progress || {};
        el.indexing.textContent = p.total ? `Indexing… ${p.done || 0}/${p.total} files` : "Indexing…";
      }
    } catch (err) {
      el.status.textContent = describeError(err) || "";
    }
  }

  async function loadFormats() {
    try {
      const f = await api("/api/formats");
      const keep = el.rate.value;
      el.rate.replaceChildren(new Option("any", ""), ...f.sample_rates.map((r) => new Option(`${formatRate(r.value)} (${r.clips})`, String(r.value))));
      el.rate.value = keep;
      const names = { 1: "mono", 2: "stereo" };
      const keepCh = el.channels.value;
      el.channels.replaceChildren(new Option("any", ""), ...f.channels.map((c) => new Option(`${names[c.value] || `${c.value} ch`} (${c.clips})`, String(c.value))));
      el.channels.value = keepCh;
    } catch (_) { /* the filters keep their defaults */ }
  }

  async function loadFolders() {
    try {
      const { folders } = await api("/api/folders");
      el.folderList.replaceChildren(...folders.map((f) => {
        const o = document.createElement("option");
        o.value = f.path;
        o.label = `${f.clips} clips`;
        return o;
      }));
    } catch (_) { /* the filter still accepts typed folders */ }
  }

  // ---------------------------------------------------------------- searching

  function filters() {
    const p = { k: Number(el.count.value) || 20 };
    const min = el.minDur.value.trim(), max = el.maxDur.value.trim(), folder = el.folder.value.trim();
    if (min !== "") p.min_duration = Number(min);
    if (max !== "") p.max_duration = Number(max);
    if (folder) p.path_prefix = folder.endsWith("/") ? folder : `${folder}/`;
    if (el.rate.value) p.sample_rate = Number(el.rate.value);
    if (el.channels.value) p.channels = Number(el.channels.value);
    return p;
  }

  function schedule() {
    clearTimeout(state.debounce);
    state.debounce = setTimeout(run, DEBOUNCE_MS);
  }

  function runNow() {
    clearTimeout(state.debounce);
    return run();
  }

  async function run() {
    const seq = ++state.seq;
    if (state.controller) state.controller.abort();
    const controller = new AbortController();
    state.controller = controller;
    const mode = state.mode;
    const p = filters();
    syncUrl();
    let request;
    if (mode.kind === "text") {
      const q = el.q.value.trim();
      if (!q) { render([], null); return; }
      const params = new URLSearchParams({ q, ...p });
      if (el.mode.value !== DEFAULT_MODE) params.set("mode", el.mode.value);
      request = api(`/api/search?${params}`, { signal: controller.signal });
    } else if (mode.kind === "collection") {
      request = api(`/api/collections/${encodeURIComponent(mode.name)}`, { signal: controller.signal });
    } else if (mode.kind === "similar") {
      request = api("/api/similar", {
        method: "POST", signal: controller.signal,
        headers: { "Content-Type": "application/json" }, body: JSON.stringify({ id: mode.id, ...p }),
      });
    } else {
      const data = new FormData();
      data.append("file", mode.file, mode.file.name);
      for (const [key, value] of Object.entries(p)) data.append(key, String(value));
      request = api("/api/similar", { method: "POST", body: data, signal: controller.signal });
    }
    el.results.setAttribute("aria-busy", "true");
    try {
      const body = await request;
      if (seq !== state.seq) return; // a newer request has started: this answer is stale
      render(body.results, body);
    } catch (err) {
      if (seq !== state.seq) return;
      const text = describeError(err);
      if (text) setMessage(text, true);
    } finally {
      if (seq === state.seq) el.results.removeAttribute("aria-busy");
    }
  }

  function setMode(mode) {
    state.mode = mode;
    el.contextActions.hidden = mode.kind !== "collection";
    if (mode.kind === "text") {
      el.context.hidden = true;
    } else if (mode.kind === "collection") {
      const base = `/api/collections/${encodeURIComponent(mode.name)}`;
      el.contextText.textContent = `Collection “${mode.name}”`;
      el.exportZip.href = `${base}/export.zip`;
      el.exportCsv.href = `${base}/export.csv`;
      el.deleteCollection.hidden = mode.name === "favourites";
      el.context.hidden = false;
    } else {
      el.contextText.textContent = mode.kind === "similar" ? `Sounds like “${mode.name}”` : `Sounds like your file “${mode.file.name}”`;
      el.context.hidden = false;
    }
    for (const b of el.collections.children) b.setAttribute("aria-pressed", String(mode.kind === "collection" && b.dataset.name === mode.name));
  }

  // ---------------------------------------------------------------- the address: q, mode, filters, sort

  function urlParams() {
    const u = new URLSearchParams();
    const m = state.mode;
    if (m.kind === "similar") u.set("like", String(m.id));
    else if (m.kind === "collection") u.set("collection", m.name);
    else if (el.q.value.trim()) u.set("q", el.q.value.trim());
    if (el.mode.value !== DEFAULT_MODE) u.set("mode", el.mode.value);
    if (el.sort.value !== "match") u.set("sort", el.sort.value);
    if (el.minDur.value.trim()) u.set("min", el.minDur.value.trim());
    if (el.maxDur.value.trim()) u.set("max", el.maxDur.value.trim());
    if (el.rate.value) u.set("sr", el.rate.value);
    if (el.channels.value) u.set("ch", el.channels.value);
    if (el.folder.value.trim()) u.set("folder", el.folder.value.trim());
    if (el.count.value !== "20") u.set("k", el.count.value);
    return u;
  }

  function syncUrl() {
    if (state.restoring || state.mode.kind === "upload") return;
    const u = urlParams();
    const search = u.toString() ? `?${u}` : location.pathname;
    if (`?${u}` === location.search || (!u.toString() && !location.search)) return;
    // typing one query letter by letter makes one history entry, not one per debounced search
    const q = u.get("q") || "", prev = state.lastUrlQuery;
    const others = (x) => { const c = new URLSearchParams(x); c.delete("q"); return c.toString(); };
    const typing = prev !== null && q && prev && (q.startsWith(prev) || prev.startsWith(q))
      && others(location.search) === others(u);
    state.lastUrlQuery = q;
    if (typing) history.replaceState(null, "", search);
    else history.pushState(null, "", search);
  }

  async function applyUrl() {
    const u = new URLSearchParams(location.search);
    state.restoring = true;
    el.q.value = u.get("q") || "";
    el.mode.value = ["hybrid", "audio", "text"].includes(u.get("mode")) ? u.get("mode") : DEFAULT_MODE;
    el.sort.value = ["match", "name", "duration"].includes(u.get("sort")) ? u.get("sort") : "match";
    el.minDur.value = u.get("min") || "";
    el.maxDur.value = u.get("max") || "";
    setSelect(el.rate, u.get("sr") || "");
    setSelect(el.channels, u.get("ch") || "");
    el.folder.value = u.get("folder") || "";
    el.count.value = ["10", "20", "50", "100"].includes(u.get("k")) ? u.get("k") : "20";
    state.lastUrlQuery = el.q.value.trim();
    const like = Number(u.get("like"));
    if (u.get("collection")) setMode({ kind: "collection", name: u.get("collection") });
    else if (like > 0) {
      let name = `clip ${like}`;
      try { name = (await api(`/api/clips/${like}`)).name || name; } catch (_) { /* shown by the search */ }
      setMode({ kind: "similar", id: like, name });
    } else setMode({ kind: "text" });
    try {
      if (state.mode.kind !== "text" || el.q.value.trim()) await runNow();
      else render([], null);
    } finally { state.restoring = false; }
  }

  function setSelect(select, value) {
    if (value && ![...select.options].some((o) => o.value === value)) select.append(new Option(value, value));
    select.value = value;
  }

  function moreLikeThis(result) {
    setMode({ kind: "similar", id: result.id, name: result.name });
    runNow();
  }

  function searchByFile(file) {
    if (!file) return;
    setMode({ kind: "upload", file });
    runNow();
  }

  function setMessage(text, isError = false) {
    el.message.textContent = text;
    el.message.classList.toggle("error", isError);
  }

  // ---------------------------------------------------------------- results

  function formatDuration(s) {
    if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
    const m = Math.floor(s / 60), r = Math.round(s % 60);
    return `${m}:${String(r).padStart(2, "0")}`;
  }

  function sorted(results) {
    const by = el.sort.value;
    const out = results.slice();
    if (by === "name") out.sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true, sensitivity: "base" }));
    else if (by === "duration") out.sort((a, b) => a.duration - b.duration);
    return out;
  }

  function render(results, body) {
    results = results.filter((r) => r.id !== null && r.id !== undefined).map((r, i) => ({ ...r, rank: i + 1 }));
    state.serverOrder = results;
    state.body = body;
    stopIfGone(results);
    results = sorted(results);
    state.results = results;
    state.rows.clear();
    state.selected = -1;
    const items = results.map((r, i) => buildRow(r, i));
    el.results.replaceChildren(...items);
    el.empty.hidden = results.length > 0 || (body !== null);
    if (body === null) setMessage("");
    else if (results.length === 0) setMessage("No matching sounds. Try other words or loosen the filters.");
    else {
      const what = body.query !== undefined ? ` for “${body.query}”` : "";
      const took = body.took_ms !== undefined ? ` · ${Math.round(body.took_ms)} ms` : "";
      const weak = body.no_good_match ? " · no good match: the closest sounds are shown" : "";
      setMessage(`${results.length} result${results.length === 1 ? "" : "s"}${what}${took}${weak}`);
    }
    if (results.length) select(0, false);
    for (const { canvas } of state.rows.values()) observer.observe(canvas);
  }

  function button(cls, label, html, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = cls;
    b.innerHTML = html;
    b.setAttribute("aria-label", label);
    b.title = label;
    b.tabIndex = -1;
    b.addEventListener("click", (e) => { e.stopPropagation(); onClick(e); });
    return b;
  }

  function chip(cls, text, title, onClick) {
    const c = document.createElement(onClick ? "button" : "span");
    c.className = cls;
    c.textContent = text;
    if (title) c.title = title;
    if (onClick) {
      c.type = "button";
      c.tabIndex = -1;
      c.addEventListener("click", (e) => { e.stopPropagation(); onClick(); });
    }
    return c;
  }

  function formatRate(r) {
    return r ? `${(r / 1000).toLocaleString("en", { maximumFractionDigits: 2 })} kHz` : "—";
  }

  function formatChannels(c) {
    return c === 1 ? "mono" : c === 2 ? "stereo" : c ? `${c} ch` : "—";
  }

  function narrowByTag(label) {
    const q = el.q.value.trim();
    if (!q.toLowerCase().includes(label.toLowerCase())) el.q.value = q ? `${q} ${label}` : label;
    setMode({ kind: "text" });
    runNow();
  }

  function buildRow(r, i) {
    const li = document.createElement("li");
    li.className = "result";
    li.id = `result-${r.id}`;
    li.setAttribute("role", "option");
    li.setAttribute("aria-selected", "false");
    li.tabIndex = -1;
    li.dataset.index = String(i);
    li.dataset.id = String(r.id);
    const tagsList = r.tags || [];
    li.setAttribute("aria-label", `${r.name}, ${formatDuration(r.duration)}, ${tagsList.slice(0, 3).map((t) => t.label).join(", ")}`);
    li.draggable = true;
    li.addEventListener("dragstart", (e) => dragOut(e, r));

    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = String(r.rank || i + 1);

    const play = button("play", `Play ${r.name}`, ICON_PLAY, () => { select(i, false); toggle(r); });
    const fav = state.favourites.has(r.id);
    const star = button("star", fav ? `Remove ${r.name} from favourites` : `Add ${r.name} to favourites`, fav ? "★" : "☆", () => toggleFavourite(r));
    star.setAttribute("aria-pressed", String(fav));

    const meta = document.createElement("div");
    meta.className = "meta";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = r.name;
    name.title = r.path;
    const folder = document.createElement("button");
    folder.type = "button";
    folder.className = "folder";
    folder.tabIndex = -1;
    folder.append(document.createTextNode(`\u200e${r.folder}\u200e`));
    folder.title = `Only search in ${r.folder}`;
    folder.setAttribute("aria-label", `Only search in folder ${r.folder}`);
    folder.addEventListener("click", (e) => {
      e.stopPropagation(); el.folder.value = r.folder;
      if (state.mode.kind === "collection") setMode({ kind: "text" });
      runNow();
    });
    meta.append(name, folder);
    if (r.duplicates) { // one result stands for every identical file
      const copies = document.createElement("span");
      copies.className = "copies";
      copies.textContent = `+${r.duplicates} ${r.duplicates === 1 ? "copy" : "copies"}`;
      copies.title = `Identical files:\n${(r.paths || []).slice(1).join("\n")}`;
      meta.append(copies);
    }

    const tags = document.createElement("div");
    tags.className = "tags";
    const why = r.why || {};
    for (const w of why.words || []) tags.append(chip("why why-word", w, `matched the word “${w}” in the name or metadata`));
    for (const t of why.tags || []) tags.append(chip("why why-tag", t, `the sound matched “${t}”`));
    for (const t of tagsList.slice(0, 3)) {
      tags.append(chip("tag", t.label, `${t.label}: ${Math.round(t.prob * 100)}% · click to narrow the search`, () => narrowByTag(t.label)));
    }

    const canvas = document.createElement("canvas");
    canvas.className = "wave";
    canvas.dataset.id = String(r.id);
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", `Waveform of ${r.name}; click to play from a point, drag to select a region`);
    attachRegionSelection(canvas, r, i);

    const match = document.createElement("span");
    match.className = "match";
    if (typeof r.match === "number") {
      const bar = document.createElement("span");
      bar.className = "match-bar";
      const fill = document.createElement("span");
      fill.style.width = `${Math.round(Math.max(0, Math.min(1, r.match)) * 100)}%`;
      bar.append(fill);
      match.append(bar, document.createTextNode(r.match.toFixed(2)));
      match.title = `match strength ${r.match.toFixed(2)}`;
    } else {
      match.textContent = "—";
      match.title = "no match strength for this result";
    }

    const duration = document.createElement("span");
    duration.className = "duration";
    duration.textContent = formatDuration(r.duration);
    const rate = document.createElement("span");
    rate.className = "rate";
    rate.textContent = formatRate(r.sample_rate);
    const chans = document.createElement("span");
    chans.className = "chans";
    chans.textContent = formatChannels(r.channels);

    const actions = document.createElement("div");
    actions.className = "actions";
    const download = document.createElement("a");
    download.className = "act download";
    download.href = `/api/clips/${r.id}/download`;
    download.download = r.name;
    download.tabIndex = -1;
    download.innerHTML = "⤓";
    download.title = download.ariaLabel = `Download ${r.name}`;
    download.addEventListener("click", (e) => e.stopPropagation());
    const copy = button("act copy", `Copy the path of ${r.name}`, ICON_COPY, () => copyPath(r));
    const collect = button("act collect", `Add ${r.name} to a collection`, "+", () => openCollect(r));
    const more = button("act more", `More sounds like ${r.name}`, "≈", () => moreLikeThis(r));
    actions.append(download, copy, collect, more);
    if (state.mode.kind === "collection") {
      actions.append(button("act uncollect", `Remove ${r.name} from this collection`, "✕", () => uncollect(r)));
    }

    const region = document.createElement("div");
    region.className = "region";
    region.hidden = true;
    const regionText = document.createElement("span");
    regionText.className = "region-text";
    const regionPlay = button("ghost small region-play", `Audition the selected region of ${r.name}`, "▶ Region", () => playRegion(r));
    const regionSave = document.createElement("a");
    regionSave.className = "ghost small region-save";
    regionSave.textContent = "⤓ Region WAV";
    regionSave.tabIndex = -1;
    regionSave.addEventListener("click", (e) => e.stopPropagation());
    const regionClear = button("ghost small region-clear", "Clear the region", "✕", () => setRegion(r, null));
    region.append(regionText, regionPlay, regionSave, regionClear);

    li.append(rank, play, star, canvas, meta, tags, match, duration, rate, chans, actions, region);
    li.addEventListener("click", () => select(i, true));
    state.rows.set(r.id, { li, canvas, button: play, star, result: r, region, regionText, regionSave });
    if (state.regions.has(r.id)) showRegion(r.id);
    return li;
  }

  // ---------------------------------------------------------------- drag out, copy, regions

  function dragOut(e, r) {
    if (state.selectingRegion) { e.preventDefault(); return; } // a drag on the waveform selects a region
    const ext = (r.name.split(".").pop() || "").toLowerCase();
    const types = { wav: "audio/wav", flac: "audio/flac", ogg: "audio/ogg", oga: "audio/ogg", opus: "audio/ogg", mp3: "audio/mpeg", m4a: "audio/mp4", aif: "audio/aiff", aiff: "audio/aiff" };
    const url = new URL(`/api/clips/${r.id}/download`, location.href).href;
    // Chromium: dropping on the desktop or a DAW saves the file (DownloadURL = type:name:absolute URL)
    e.dataTransfer.setData("DownloadURL", `${types[ext] || "application/octet-stream"}:${r.name}:${url}`);
    e.dataTransfer.setData("text/uri-list", url);
    e.dataTransfer.setData("text/plain", r.path);
    e.dataTransfer.setData("application/x-audiofind-clip", String(r.id));
    e.dataTransfer.effectAllowed = "copy";
  }

  async function copyPath(r) {
    try {
      await navigator.clipboard.writeText(r.path);
    } catch (_) {
      const t = document.createElement("textarea");
      t.value = r.path;
      document.body.append(t);
      t.select();
      document.execCommand("copy");
      t.remove();
    }
    setMessage(`Copied ${r.path}`);
  }

  function attachRegionSelection(canvas, r, i) {
    let down = null;
    const at = (e) => { const box = canvas.getBoundingClientRect(); return Math.min(1, Math.max(0, (e.clientX - box.left) / box.width)); };
    canvas.addEventListener("mousedown", (e) => e.preventDefault()); // no row drag from the waveform
    canvas.addEventListener("pointerdown", (e) => {
      if (e.button !== 0) return;
      state.selectingRegion = true;
      down = { x: e.clientX, f: at(e), moved: false };
      canvas.setPointerCapture(e.pointerId);
    });
    canvas.addEventListener("pointermove", (e) => {
      if (!down) return;
      if (Math.abs(e.clientX - down.x) > 4) down.moved = true;
      if (down.moved) {
        const a = Math.min(down.f, at(e)), b = Math.max(down.f, at(e)), d = r.duration;
        state.regions.set(r.id, { start: a * d, end: b * d });
        draw(r.id);
      }
    });
    canvas.addEventListener("pointerup", (e) => {
      state.selectingRegion = false;
      if (!down) return;
      const moved = down.moved;
      down = null;
      select(i, false);
      if (moved) { showRegion(r.id); return; }
      playFrom(r, at(e));
    });
    canvas.addEventListener("pointercancel", () => { state.selectingRegion = false; down = null; });
    canvas.addEventListener("click", (e) => e.stopPropagation());
  }

  function setRegion(r, region) {
    if (region) state.regions.set(r.id, region); else state.regions.delete(r.id);
    if (!region && state.stopAt && state.stopAt.id === r.id) state.stopAt = null;
    showRegion(r.id);
    draw(r.id);
  }

  function showRegion(id) {
    const row = state.rows.get(id);
    if (!row) return;
    const reg = state.regions.get(id);
    row.region.hidden = !reg;
    row.li.classList.toggle("has-region", !!reg);
    if (!reg) return;
    const f = (x) => x.toFixed(3);
    row.regionText.textContent = `Region ${f(reg.start)}–${f(reg.end)} s (${(reg.end - reg.start).toFixed(2)} s)`;
    row.regionSave.href = `/api/clips/${id}/region.wav?start=${f(reg.start)}&end=${f(reg.end)}`;
    row.regionSave.download = `${row.result.name.replace(/\.[^.]+$/, "")}_${f(reg.start)}-${f(reg.end)}.wav`;
  }

  function playRegion(r) {
    const reg = state.regions.get(r.id);
    if (!reg) return;
    state.stopAt = { id: r.id, ...reg };
    playFrom(r, reg.start / r.duration, true);
  }

  function select(i, focus = true) {
    if (!state.results.length) return;
    i = Math.max(0, Math.min(state.results.length - 1, i));
    const previous = el.results.children[state.selected];
    if (previous) {
      previous.setAttribute("aria-selected", "false"); previous.tabIndex = -1;
      for (const c of previous.querySelectorAll("button, a")) c.tabIndex = -1;
    }
    state.selected = i;
    const li = el.results.children[i];
    li.setAttribute("aria-selected", "true");
    li.tabIndex = 0;
    for (const c of li.querySelectorAll("button, a")) c.tabIndex = 0; // Tab reaches the selected row's actions
    el.q.setAttribute("aria-activedescendant", li.id);
    if (focus) { li.focus({ preventScroll: true }); li.scrollIntoView({ block: "nearest" }); }
  }

  // ---------------------------------------------------------------- waveforms

  const observer = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      if (!entry.isIntersecting) continue;
      observer.unobserve(entry.target);
      loadWave(Number(entry.target.dataset.id));
    }
  }, { rootMargin: "200px" });

  async function loadWave(id) {
    const row = state.rows.get(id);
    if (!row) return;
    if (!state.waves.has(id)) {
      const points = Math.min(2000, Math.max(64, Math.round(row.canvas.clientWidth || 300)));
      state.waves.set(id, api(`/api/clips/${id}/waveform?points=${points}`).catch(() => null));
    }
    const wave = await state.waves.get(id);
    if (wave) state.waves.set(id, wave);
    draw(id);
  }

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function draw(id) {
    const row = state.rows.get(id);
    if (!row) return;
    const canvas = row.canvas;
    const wave = state.waves.get(id);
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(canvas.clientWidth * dpr)), h = Math.max(1, Math.round(canvas.clientHeight * dpr));
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, w, h);
    const playing = state.playingId === id;
    const duration = el.player.duration || row.result.duration || 1;
    const progress = playing && Number.isFinite(duration) ? Math.min(1, el.player.currentTime / duration) : 0;
    const mid = h / 2;
    const base = cssVar("--wave"), played = cssVar("--wave-played");
    const reg = state.regions.get(id);
    if (reg) {
      const d = row.result.duration || 1;
      ctx.fillStyle = cssVar("--region");
      ctx.fillRect(Math.round((reg.start / d) * w), 0, Math.max(1, Math.round(((reg.end - reg.start) / d) * w)), h);
    }
    if (!wave || wave instanceof Promise || !wave.min || !wave.min.length) {
      ctx.fillStyle = base;
      ctx.fillRect(0, mid - dpr / 2, w, dpr);
    } else {
      const n = wave.min.length, scale = (mid - dpr) / Math.max(wave.peak, 1e-3);
      const bar = Math.max(1, Math.round(2 * dpr)), gap = Math.max(1, Math.round(dpr));
      for (let x = 0; x < w; x += bar + gap) {
        const a = Math.floor((x / w) * n), b = Math.max(a + 1, Math.floor(((x + bar) / w) * n));
        let lo = 0, hi = 0;
        for (let j = a; j < b && j < n; j++) { lo = Math.min(lo, wave.min[j]); hi = Math.max(hi, wave.max[j]); }
        const top = mid - Math.max(hi * scale, dpr / 2), bottom = mid - Math.min(lo * scale, -dpr / 2);
        ctx.fillStyle = x / w < progress ? played : base;
        ctx.fillRect(x, top, bar, bottom - top);
      }
    }
    if (playing) {
      ctx.fillStyle = cssVar("--text");
      ctx.fillRect(Math.round(progress * w) - dpr, 0, Math.max(1, Math.round(2 * dpr)), h);
    }
  }

  // ---------------------------------------------------------------- playback

  function setPlayingUi(id, isPlaying) {
    for (const [rid, row] of state.rows) {
      const on = rid === id && isPlaying;
      row.li.classList.toggle("playing", on);
      row.button.innerHTML = on ? ICON_PAUSE : ICON_PLAY;
      row.button.setAttribute("aria-label", `${on ? "Pause" : "Play"} ${row.result.name}`);
    }
  }

  function toggle(r) {
    const player = el.player;
    if (state.playingId === r.id) {
      if (player.paused) player.play().catch(playError);
      else { player.pause(); setPlayingUi(r.id, false); } // at once: the pause event comes a task later
      return;
    }
    playFrom(r, 0);
  }

  function playFrom(r, fraction, keepRegion = false) {
    const player = el.player;
    if (!keepRegion) state.stopAt = null;
    player.loop = el.loop.checked && !keepRegion; // a region loops in frame(), by its own ends
    const previous = state.playingId;
    if (previous !== r.id) {
      state.playingId = r.id;
      player.src = r.audio_url;
      if (previous !== null) draw(previous);
    }
    const seek = () => {
      const d = Number.isFinite(player.duration) ? player.duration : r.duration;
      if (fraction > 0) player.currentTime = fraction * d;
    };
    if (player.readyState >= 1 && previous === r.id) seek();
    else player.addEventListener("loadedmetadata", seek, { once: true });
    player.play().catch(playError);
  }

  function playError(err) {
    if (err.name === "AbortError") return; // replaced by another clip before it started
    setMessage(`Cannot play this clip: ${err.message}`, true);
  }

  function stopIfGone(results) {
    if (state.playingId !== null && !results.some((r) => r.id === state.playingId)) {
      el.player.pause();
      el.player.removeAttribute("src");
      el.player.load();
      state.playingId = null;
    }
  }

  function stopAll() {
    state.stopAt = null;
    el.player.pause();
    setPlayingUi(state.playingId, false);
    if (Number.isFinite(el.player.duration)) el.player.currentTime = 0;
    frame();
  }

  function frame() {
    const stop = state.stopAt, player = el.player;
    if (stop && stop.id === state.playingId && player.currentTime >= stop.end) {
      if (el.loop.checked) player.currentTime = stop.start; // loop the region
      else { state.stopAt = null; player.pause(); }
    }
    if (state.playingId !== null) draw(state.playingId);
    if (!el.player.paused) requestAnimationFrame(frame);
  }

  el.player.addEventListener("play", () => { setPlayingUi(state.playingId, true); requestAnimationFrame(frame); });
  el.player.addEventListener("pause", () => { setPlayingUi(state.playingId, false); frame(); });
  el.player.addEventListener("ended", () => { setPlayingUi(state.playingId, false); frame(); });
  el.player.addEventListener("seeked", () => frame());
  el.player.addEventListener("error", () => {
    if (el.player.getAttribute("src")) setMessage("This clip could not be loaded (it may have moved since indexing).", true);
  });

  // ---------------------------------------------------------------- keyboard

  function isTyping(target) {
    return target instanceof HTMLInputElement || target instanceof HTMLSelectElement || target instanceof HTMLTextAreaElement;
  }

  document.addEventListener("keydown", (e) => {
    if (el.tokenDialog.open || e.altKey || e.ctrlKey || e.metaKey) return;
    const inResults = el.results.contains(e.target);
    const onRow = e.target instanceof HTMLElement && e.target.classList.contains("result");
    if (e.key === "ArrowDown" && (e.target === el.q || inResults || !isTyping(e.target))) {
      if (!state.results.length) return;
      e.preventDefault();
      select(inResults || e.target !== el.q ? state.selected + 1 : Math.max(0, state.selected));
      autoplay();
    } else if (e.key === "ArrowUp" && (inResults || (!isTyping(e.target) && state.results.length))) {
      e.preventDefault();
      if (state.selected <= 0) { el.q.focus(); return; }
      select(state.selected - 1);
      autoplay();
    } else if (e.key === "Home" && onRow) {
      e.preventDefault(); select(0);
    } else if (e.key === "End" && onRow) {
      e.preventDefault(); select(state.results.length - 1);
    } else if ((e.key === " " || e.key === "Spacebar") && (onRow || (!isTyping(e.target) && !(e.target instanceof HTMLButtonElement)))) {
      if (state.selected < 0) return;
      e.preventDefault();
      toggle(state.results[state.selected]);
    } else if (e.key === "Enter" && onRow) {
      e.preventDefault();
      moreLikeThis(state.results[state.selected]);
    } else if (e.key === "Escape") {
      if (el.collectDialog.open) return; // the dialog closes itself
      stopAll();
      if (state.mode.kind !== "text" && state.mode.kind !== "collection") backToText();
    } else if (onRow && state.selected >= 0 && !e.shiftKey) {
      const r = state.results[state.selected];
      const key = e.key.toLowerCase();
      if (key === "f") { e.preventDefault(); toggleFavourite(r); }
      else if (key === "c") { e.preventDefault(); copyPath(r); }
      else if (key === "d") { e.preventDefault(); state.rows.get(r.id).li.querySelector(".download").click(); }
      else if (key === "a") { e.preventDefault(); openCollect(r); }
    }
  });

  function autoplay() {
    if (el.autoplay.checked && state.selected >= 0) playFrom(state.results[state.selected], 0);
  }

  // ---------------------------------------------------------------- collections

  async function loadCollections() {
    try {
      const [{ collections }, fav] = await Promise.all([api("/api/collections"), api("/api/collections/favourites")]);
      state.collections = collections;
      state.favourites = new Set(fav.results.map((r) => r.id).filter((id) => id !== null));
    } catch (_) { return; }
    el.collections.replaceChildren(...state.collections.map((c) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "collection";
      b.dataset.name = c.name;
      b.textContent = `${c.builtin ? "★ " : ""}${c.name} (${c.count})`;
      b.title = `Show the collection “${c.name}”; drop a result here to add it`;
      b.setAttribute("aria-pressed", String(state.mode.kind === "collection" && state.mode.name === c.name));
      b.addEventListener("click", () => showCollection(c.name));
      b.addEventListener("dragover", (e) => {
        if (e.dataTransfer.types.includes("application/x-audiofind-clip")) { e.preventDefault(); b.classList.add("drop-target"); }
      });
      b.addEventListener("dragleave", () => b.classList.remove("drop-target"));
      b.addEventListener("drop", (e) => {
        const id = Number(e.dataTransfer.getData("application/x-audiofind-clip"));
        b.classList.remove("drop-target");
        if (id) { e.preventDefault(); addToCollection(c.name, id, false); }
      });
      return b;
    }));
    for (const [id, row] of state.rows) {
      const on = state.favourites.has(id);
      row.star.textContent = on ? "★" : "☆";
      row.star.setAttribute("aria-pressed", String(on));
      row.star.setAttribute("aria-label", `${on ? "Remove" : "Add"} ${row.result.name} ${on ? "from" : "to"} favourites`);
    }
  }

  function showCollection(name) {
    setMode({ kind: "collection", name });
    runNow();
  }

  async function addToCollection(name, id, create) {
    try {
      await api(`/api/collections/${encodeURIComponent(name)}/clips`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ ids: [id], create }),
      });
      setMessage(`Added to “${name}”`);
    } catch (err) { setMessage(describeError(err) || "", true); }
    await loadCollections();
  }

  async function removeFromCollection(name, id) {
    try {
      await api(`/api/collections/${encodeURIComponent(name)}/clips/${id}`, { method: "DELETE" });
    } catch (err) { setMessage(describeError(err) || "", true); }
    await loadCollections();
  }

  async function toggleFavourite(r) {
    if (state.favourites.has(r.id)) await removeFromCollection("favourites", r.id);
    else await addToCollection("favourites", r.id, false);
    if (state.mode.kind === "collection" && state.mode.name === "favourites") runNow();
  }

  async function uncollect(r) {
    if (state.mode.kind !== "collection") return;
    await removeFromCollection(state.mode.name, r.id);
    runNow();
  }

  function openCollect(r) {
    state.collectFor = r;
    el.collectWhat.textContent = r.name;
    el.collectSelect.replaceChildren(...state.collections.map((c) => new Option(c.name, c.name)));
    el.collectNew.value = "";
    el.collectDialog.showModal();
    el.collectNew.focus();
  }

  el.collectForm.addEventListener("submit", async () => {
    const r = state.collectFor;
    const fresh = el.collectNew.value.trim();
    if (r) await addToCollection(fresh || el.collectSelect.value, r.id, !!fresh);
  });
  el.collectCancel.addEventListener("click", () => el.collectDialog.close());
  el.newCollection.addEventListener("click", async () => {
    state.collectFor = null;
    el.collectWhat.textContent = "A new, empty collection";
    el.collectSelect.replaceChildren();
    el.collectNew.value = "";
    el.collectDialog.showModal();
  });
  el.collectDialog.addEventListener("close", async () => {
    const fresh = el.collectNew.value.trim();
    if (state.collectFor === null && fresh && el.collectDialog.returnValue !== "cancel") {
      try {
        await api("/api/collections", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name: fresh }) });
      } catch (err) { setMessage(describeError(err) || "", true); }
      el.collectNew.value = "";
      await loadCollections();
    }
  });
  el.deleteCollection.addEventListener("click", async () => {
    if (state.mode.kind !== "collection") return;
    try { await api(`/api/collections/${encodeURIComponent(state.mode.name)}`, { method: "DELETE" }); } catch (err) { setMessage(describeError(err) || "", true); }
    await loadCollections();
    backToText();
  });

  // ---------------------------------------------------------------- drag and drop

  let dragDepth = 0;
  const hasFiles = (e) => e.dataTransfer && Array.from(e.dataTransfer.types || []).includes("Files");
  window.addEventListener("dragenter", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dragDepth++;
    el.overlay.hidden = false;
  });
  window.addEventListener("dragover", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = "copy";
  });
  window.addEventListener("dragleave", (e) => {
    if (!hasFiles(e)) return;
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) el.overlay.hidden = true;
  });
  window.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dragDepth = 0;
    el.overlay.hidden = true;
    searchByFile(e.dataTransfer.files[0]);
  });

  // ---------------------------------------------------------------- wiring

  function backToText() {
    setMode({ kind: "text" });
    runNow();
    el.q.focus();
  }

  el.form.addEventListener("submit", (e) => { e.preventDefault(); setMode({ kind: "text" }); runNow(); });
  el.q.addEventListener("input", () => { if (state.mode.kind !== "text") setMode({ kind: "text" }); schedule(); });
  for (const input of [el.minDur, el.maxDur, el.folder]) input.addEventListener("input", schedule);
  for (const select of [el.count, el.rate, el.channels, el.mode]) select.addEventListener("change", runNow);
  el.sort.addEventListener("change", () => {
    syncUrl();
    if (state.serverOrder) render(state.serverOrder, state.body);
  });
  el.clear.addEventListener("click", () => {
    el.minDur.value = ""; el.maxDur.value = ""; el.folder.value = ""; el.rate.value = ""; el.channels.value = "";
    runNow();
  });
  el.stop.addEventListener("click", stopAll);
  const prefs = JSON.parse(localStorage.getItem("audiofind-prefs") || "{}");
  const savePrefs = () => localStorage.setItem("audiofind-prefs", JSON.stringify({
    loop: el.loop.checked, autoplay: el.autoplay.checked, volume: Number(el.volume.value), roomy: el.results.classList.contains("roomy"),
  }));
  el.loop.checked = !!prefs.loop;
  el.autoplay.checked = !!prefs.autoplay;
  el.volume.value = String(prefs.volume ?? 0.8);
  el.player.volume = Number(el.volume.value);
  const setView = (roomy) => {
    el.results.classList.toggle("roomy", roomy);
    el.view.setAttribute("aria-pressed", String(roomy));
    for (const id of state.rows.keys()) draw(id);
  };
  setView(!!prefs.roomy);
  el.view.addEventListener("click", () => { setView(!el.results.classList.contains("roomy")); savePrefs(); });
  el.loop.addEventListener("change", () => { el.player.loop = el.loop.checked && !state.stopAt; savePrefs(); });
  el.player.loop = el.loop.checked;
  el.autoplay.addEventListener("change", savePrefs);
  el.volume.addEventListener("input", () => { el.player.volume = Number(el.volume.value); savePrefs(); });
  window.addEventListener("popstate", () => applyUrl());
  el.contextClose.addEventListener("click", backToText);
  el.exampleButton.addEventListener("click", () => el.exampleFile.click());
  el.exampleFile.addEventListener("change", () => { searchByFile(el.exampleFile.files[0]); el.exampleFile.value = ""; });
  for (const b of document.querySelectorAll(".suggest")) {
    b.addEventListener("click", () => { el.q.value = b.textContent; setMode({ kind: "text" }); runNow(); });
  }
  el.tokenForm.addEventListener("submit", async () => {
    state.token = el.tokenInput.value.trim();
    sessionStorage.setItem("audiofind-token", state.token);
    await startSession();
    loadStatus(); loadFolders(); loadFormats(); loadCollections(); runNow();
  });
  window.addEventListener("resize", () => { for (const id of state.rows.keys()) draw(id); });
  matchMedia("(prefers-color-scheme: light)").addEventListener("change", () => { for (const id of state.rows.keys()) draw(id); });

  async function init() {
    state.token = readToken();
    await startSession();
    loadStatus();
    setInterval(loadStatus, 5000); // picks up a re-index in progress
    loadFolders();
    await Promise.all([loadFormats(), loadCollections()]);
    await applyUrl();
    history.replaceState(null, "", location.href);
  }
  init();
})();
