// audiofind web page: plain JS, no build step, no third-party code. Talks only to this server's /api.
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
  };

  const DEBOUNCE_MS = 250;
  const ICON_PLAY = '<svg viewBox="0 0 16 16" aria-hidden="true"><path d="M4 2.5v11l9.5-5.5z"/></svg>';
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
  };

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
      el.status.textContent = `${s.clips.toLocaleString()} clips · ${hours} of audio · indexed ${built}`;
      el.status.title = `model ${s.model_id} · ${s.index_kind} index · ${s.index_dir}`;
    } catch (err) {
      el.status.textContent = describeError(err) || "";
    }
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
    let request;
    if (mode.kind === "text") {
      const q = el.q.value.trim();
      if (!q) { render([], null); return; }
      const params = new URLSearchParams({ q, ...p });
      request = api(`/api/search?${params}`, { signal: controller.signal });
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
    if (mode.kind === "text") {
      el.context.hidden = true;
    } else {
      el.contextText.textContent = mode.kind === "similar" ? `Sounds like “${mode.name}”` : `Sounds like your file “${mode.file.name}”`;
      el.context.hidden = false;
    }
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

  function render(results, body) {
    stopIfGone(results);
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
      setMessage(`${results.length} result${results.length === 1 ? "" : "s"}${what} · ${Math.round(body.took_ms)} ms`);
    }
    if (results.length) select(0, false);
    for (const { canvas } of state.rows.values()) observer.observe(canvas);
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
    li.setAttribute("aria-label", `${r.name}, ${formatDuration(r.duration)}, ${r.tags.slice(0, 3).map((t) => t.label).join(", ")}`);

    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = String(i + 1);

    const play = document.createElement("button");
    play.type = "button";
    play.className = "play";
    play.innerHTML = ICON_PLAY;
    play.setAttribute("aria-label", `Play ${r.name}`);
    play.tabIndex = -1;
    play.addEventListener("click", (e) => { e.stopPropagation(); select(i, false); toggle(r); });

    const meta = document.createElement("div");
    meta.className = "meta";
    const name = document.createElement("div");
    name.className = "name";
    name.textContent = r.name;
    name.title = r.path;
    const sub = document.createElement("div");
    sub.className = "sub";
    const folder = document.createElement("button");
    folder.type = "button";
    folder.className = "folder";
    folder.tabIndex = -1;
    folder.innerHTML = "";
    folder.append(document.createTextNode(`\u200e${r.folder}\u200e`));
    folder.title = `Only search in ${r.folder}`;
    folder.setAttribute("aria-label", `Only search in folder ${r.folder}`);
    folder.addEventListener("click", (e) => { e.stopPropagation(); el.folder.value = r.folder; runNow(); });
    const tags = document.createElement("div");
    tags.className = "tags";
    for (const t of r.tags.slice(0, 3)) {
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = t.label;
      tag.title = `${t.label}: ${Math.round(t.prob * 100)}%`;
      tags.append(tag);
    }
    sub.append(tags, folder);
    meta.append(name, sub);

    const canvas = document.createElement("canvas");
    canvas.className = "wave";
    canvas.dataset.id = String(r.id);
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", `Waveform of ${r.name}; click to play from a point`);
    canvas.addEventListener("click", (e) => {
      e.stopPropagation();
      select(i, false);
      const box = canvas.getBoundingClientRect();
      playFrom(r, Math.min(1, Math.max(0, (e.clientX - box.left) / box.width)));
    });

    const duration = document.createElement("span");
    duration.className = "duration";
    duration.textContent = formatDuration(r.duration);

    const more = document.createElement("button");
    more.type = "button";
    more.className = "ghost small more";
    more.textContent = "More like this";
    more.tabIndex = -1;
    more.setAttribute("aria-label", `More sounds like ${r.name}`);
    more.addEventListener("click", (e) => { e.stopPropagation(); moreLikeThis(r); });

    li.append(rank, play, meta, canvas, duration, more);
    li.addEventListener("click", () => select(i, true));
    state.rows.set(r.id, { li, canvas, button: play, result: r });
    return li;
  }

  function select(i, focus = true) {
    if (!state.results.length) return;
    i = Math.max(0, Math.min(state.results.length - 1, i));
    const previous = el.results.children[state.selected];
    if (previous) { previous.setAttribute("aria-selected", "false"); previous.tabIndex = -1; }
    state.selected = i;
    const li = el.results.children[i];
    li.setAttribute("aria-selected", "true");
    li.tabIndex = 0;
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
      if (player.paused) player.play().catch(playError); else player.pause();
      return;
    }
    playFrom(r, 0);
  }

  function playFrom(r, fraction) {
    const player = el.player;
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

  function frame() {
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
    } else if (e.key === "ArrowUp" && (inResults || (!isTyping(e.target) && state.results.length))) {
      e.preventDefault();
      if (state.selected <= 0) { el.q.focus(); return; }
      select(state.selected - 1);
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
    } else if (e.key === "Escape" && state.mode.kind !== "text") {
      backToText();
    }
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
  el.count.addEventListener("change", runNow);
  el.clear.addEventListener("click", () => { el.minDur.value = ""; el.maxDur.value = ""; el.folder.value = ""; runNow(); });
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
    loadStatus(); loadFolders(); runNow();
  });
  window.addEventListener("resize", () => { for (const id of state.rows.keys()) draw(id); });
  matchMedia("(prefers-color-scheme: light)").addEventListener("change", () => { for (const id of state.rows.keys()) draw(id); });

  async function init() {
    state.token = readToken();
    await startSession();
    loadStatus();
    loadFolders();
    const initial = new URLSearchParams(location.search).get("q");
    if (initial) { el.q.value = initial; runNow(); }
  }
  init();
})();
