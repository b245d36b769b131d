// contrahash search page. Plain DOM code, no dependencies. Every value that comes from the
// server is shown through textContent / attributes set by DOM APIs, never innerHTML.
"use strict";

(() => {
  const TOKEN_KEY = "contrahash-token";
  const $ = (id) => document.getElementById(id);
  const ui = {
    info: $("collection-info"), tokenForm: $("token-form"), tokenInput: $("token-input"),
    file: $("file-input"), drop: $("drop-zone"), random: $("random-button"),
    bits: $("bits-select"), k: $("k-input"), error: $("error"), query: $("query"),
    queryImage: $("query-image"), queryTitle: $("query-title"),
    queryLabels: $("query-labels"), timings: $("timings"), results: $("results"),
  };
  let token = sessionStorage.getItem(TOKEN_KEY);
  let info = null;
  let lastQuery = null; // {kind: "image", file} | {kind: "id", id}
  let objectUrls = [];
  let generation = 0; // ignore answers to superseded queries

  class AuthError extends Error {}

  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    if (token) headers.set("Authorization", "Bearer " + token);
    const response = await fetch(path, { ...options, headers });
    if (response.status === 401) {
      askForToken(token ? "The token was refused; enter it again:" : null);
      throw new AuthError("this server needs an API token");
    }
    if (!response.ok) {
      let message = response.status + " " + response.statusText;
      try {
        const body = await response.json();
        if (body && body.detail) message = String(body.detail);
      } catch (_) { /* not JSON */ }
      throw new Error(message);
    }
    return response;
  }

  function askForToken(message) {
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    ui.tokenForm.hidden = false;
    if (message) ui.tokenForm.querySelector("label").textContent = message;
    ui.tokenInput.focus();
  }

  function showError(err) {
    if (err instanceof AuthError) return;
    ui.error.textContent = String(err.message || err);
    ui.error.hidden = false;
  }

  function clearError() {
    ui.error.hidden = true;
    ui.error.textContent = "";
  }

  async function loadInfo() {
    info = await (await api("api/info")).json();
    ui.tokenForm.hidden = true;
    ui.bits.replaceChildren();
    for (const b of info.bits) {
      const option = document.createElement("option");
      option.value = String(b);
      option.textContent = b + " bits";
      if (b === info.default_bits) option.selected = true;
      ui.bits.append(option);
    }
    ui.k.max = String(info.max_k);
    ui.k.value = String(Math.min(info.default_k, info.max_k));
    const c = info.collection || {};
    ui.info.textContent = info.count + " items · code lengths " + info.bits.join(", ")
      + (c.run_id ? " · run " + c.run_id : "");
    document.body.dataset.ready = "true";
  }

  function params() {
    const k = Math.max(1, Math.min(Number(ui.k.value) || 1, info ? info.max_k : 1000));
    ui.k.value = String(k);
    return { k: String(k), bits: ui.bits.value };
  }

  function revokeUrls() {
    for (const url of objectUrls) URL.revokeObjectURL(url);
    objectUrls = [];
  }

  function setImage(img, url) {
    if (!token) { img.src = url; return; }
    // <img> cannot send the Authorization header: fetch the bytes and show a blob: URL.
    api(url).then((r) => r.blob()).then((blob) => {
      const objectUrl = URL.createObjectURL(blob);
      objectUrls.push(objectUrl);
      img.src = objectUrl;
    }).catch(() => { img.alt = "thumbnail unavailable"; });
  }

  async function searchImage(file) {
    lastQuery = { kind: "image", file };
    const p = params();
    const form = new FormData();
    form.append("image", file, file.name || "upload");
    form.append("k", p.k);
    form.append("bits", p.bits);
    await run(() => api("api/search", { method: "POST", body: form }), (data) => {
      const url = URL.createObjectURL(file);
      objectUrls.push(url);
      ui.queryImage.src = url;
      ui.queryTitle.textContent = file.name || "uploaded image";
      ui.queryLabels.textContent = data.query.width + "×" + data.query.height + " pixels";
    });
  }

  async function searchId(id) {
    lastQuery = { kind: "id", id };
    const p = params();
    const query = new URLSearchParams({ id: String(id), k: p.k, bits: p.bits });
    await run(() => api("api/search?" + query.toString()), (data) => {
      setImage(ui.queryImage, data.query.thumbnail_url);
      ui.queryTitle.textContent = data.query.name + " (#" + data.query.id + ")";
      ui.queryLabels.textContent = data.query.labels.join(", ");
    });
  }

  async function run(request, showQuery) {
    const mine = ++generation;
    clearError();
    const start = performance.now();
    try {
      const response = await request();
      const data = await response.json();
      const total = performance.now() - start;
      if (mine !== generation) return;
      revokeUrls();
      showQuery(data);
      render(data, total);
    } catch (err) {
      if (mine === generation) showError(err);
    }
  }

  function fmt(ms) { return ms == null ? "–" : Number(ms).toFixed(1) + " ms"; }

  function render(data, totalMs) {
    ui.query.hidden = false;
    let t = "server " + fmt(data.server_ms) + " (search " + fmt(data.search_ms);
    if (data.encode_ms != null) {
      t += ", decode " + fmt(data.decode_ms) + ", encode " + fmt(data.encode_ms)
        + " in a batch of " + data.encode_batch;
    }
    t += ") · total " + fmt(totalMs) + " · " + data.results.length + " of " + data.count
      + " items at " + data.bits + " bits";
    ui.timings.textContent = t;

    const cards = data.results.map((r) => {
      const li = document.createElement("li");
      li.className = "result";
      li.dataset.id = String(r.id);
      li.dataset.distance = String(r.distance);
      const button = document.createElement("button");
      button.type = "button";
      button.title = "search by this item";
      const img = document.createElement("img");
      img.alt = r.name;
      img.loading = "lazy";
      img.width = 128;
      img.height = 128;
      setImage(img, r.thumbnail_url);
      const name = document.createElement("span");
      name.className = "result-name";
      name.textContent = r.name;
      const labels = document.createElement("span");
      labels.className = "result-labels";
      labels.textContent = r.labels.join(", ");
      const distance = document.createElement("span");
      distance.className = "result-distance";
      distance.textContent = "distance " + r.distance;
      button.append(img, distance, name, labels);
      button.addEventListener("click", () => searchId(r.id));
      li.append(button);
      return li;
    });
    ui.results.replaceChildren(...cards);
    ui.results.dataset.generation = String(generation);
  }

  function rerun() {
    if (!lastQuery) return;
    if (lastQuery.kind === "image") searchImage(lastQuery.file);
    else searchId(lastQuery.id);
  }

  // ---------------------------------------------------------------- events

  ui.tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    token = ui.tokenInput.value.trim();
    ui.tokenInput.value = "";
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    loadInfo().then(rerun).catch(showError);
  });

  ui.file.addEventListener("change", () => {
    if (ui.file.files && ui.file.files[0]) searchImage(ui.file.files[0]);
  });

  ui.drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    ui.drop.classList.add("dragging");
  });
  ui.drop.addEventListener("dragleave", () => ui.drop.classList.remove("dragging"));
  ui.drop.addEventListener("drop", (event) => {
    event.preventDefault();
    ui.drop.classList.remove("dragging");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) searchImage(file);
  });
  ui.drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); ui.file.click(); }
  });

  ui.random.addEventListener("click", async () => {
    try {
      const item = await (await api("api/random")).json();
      await searchId(item.id);
    } catch (err) { showError(err); }
  });

  ui.bits.addEventListener("change", rerun);
  ui.k.addEventListener("change", rerun);

  loadInfo().catch(showError);
})();
