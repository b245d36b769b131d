// contrahash search page. Plain DOM code, no dependencies. Every value that comes from the
// server is shown through textContent / attributes set by DOM APIs, never innerHTML.
"use strict";

(() => {
  const TOKEN_KEY = "contrahash-token";
  const $ = (id) => document.getElementById(id);
  const ui = {
    info: $("collection-info"), tokenForm: $("token-form"), tokenInput: $("token-input"),
    file: $("file-input"), drop: $("drop-zone"), random: $("random-button"),
    bits: $("bits-select"), k: $("k-input"), album: $("album-select"),
    maxDistance: $("max-distance"), error: $("error"), query: $("query"),
    queryImage: $("query-image"), queryTitle: $("query-title"),
    queryLabels: $("query-labels"), timings: $("timings"), results: $("results"),
    more: $("more-button"), viewSearch: $("view-search"), viewDuplicates: $("view-duplicates"),
    searchView: $("search-view"), duplicatesView: $("duplicates-view"),
    dupRadius: $("dup-radius"), dupLoad: $("dup-load"), dupPrev: $("dup-prev"),
    dupNext: $("dup-next"), dupPage: $("dup-page"), dupSummary: $("dup-summary"),
    dupError: $("dup-error"), dupGroups: $("dup-groups"),
  };
  let token = sessionStorage.getItem(TOKEN_KEY);
  let info = null;
  let albums = []; // album names, in the order of the album <select>'s options
  // the last query: {kind: "image", file, codes: {bits: hex}, size} | {kind: "id", id}
  let lastQuery = null;
  let shownCount = 0; // results on the page (the offset of "more results")
  let objectUrls = [];
  let generation = 0; // ignore answers to superseded queries
  let dupPage = 1;

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

  function showError(err, where = ui.error) {
    if (err instanceof AuthError) return;
    where.textContent = String(err.message || err);
    where.hidden = false;
  }

  function clearError(where = ui.error) {
    where.hidden = true;
    where.textContent = "";
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
    await loadAlbums();
    document.body.dataset.ready = "true";
  }

  async function loadAlbums() {
    const data = await (await api("api/albums")).json();
    albums = data.albums.map((a) => a.album);
    const all = document.createElement("option");
    all.value = "-1";
    all.textContent = "all albums";
    const options = data.albums.map((a, i) => {
      const option = document.createElement("option");
      option.value = String(i);
      option.textContent = (a.album === "" ? "(top folder)" : a.album) + " · " + a.count;
      return option;
    });
    ui.album.replaceChildren(all, ...options);
    ui.album.disabled = albums.length === 0;
  }

  function params(offset) {
    const k = Math.max(1, Math.min(Number(ui.k.value) || 1, info ? info.max_k : 1000));
    ui.k.value = String(k);
    const p = { k: String(k), bits: ui.bits.value, offset: String(offset) };
    const album = Number(ui.album.value);
    if (album >= 0 && album < albums.length) p.album = albums[album];
    const d = ui.maxDistance.value.trim();
    if (d !== "" && Number(d) >= 0) p.max_distance = String(Math.floor(Number(d)));
    return p;
  }

  function revokeUrls() {
    for (const url of objectUrls) URL.revokeObjectURL(url);
    objectUrls = [];
  }

  async function blobUrl(url) {
    const blob = await (await api(url)).blob();
    const objectUrl = URL.createObjectURL(blob);
    objectUrls.push(objectUrl);
    return objectUrl;
  }

  function setImage(img, url) {
    if (!token) { img.src = url; return; }
    // <img> cannot send the Authorization header: fetch the bytes and show a blob: URL.
    blobUrl(url).then((u) => { img.src = u; }).catch(() => { img.alt = "thumbnail unavailable"; });
  }

  function openOriginal(event, url, name) {
    if (!token) return; // a plain link: the browser opens it
    event.preventDefault();
    // the file needs the Authorization header: open a tab now (while the click counts), then
    // show the fetched bytes in it as an <img> of a blob: URL (no token in any URL)
    const win = window.open("", "_blank");
    fetch(url, { headers: { Authorization: "Bearer " + token } })
      .then((r) => { if (!r.ok) throw new Error(r.status + " " + r.statusText); return r.blob(); })
      .then((blob) => {
        if (!win) return;
        const img = win.document.createElement("img");
        img.src = URL.createObjectURL(blob);
        img.alt = name;
        win.document.title = name;
        win.document.body.replaceChildren(img);
      })
      .catch((err) => { if (win) win.close(); showError(err); });
  }

  function sizeText(width, height) {
    return width && height ? width + "×" + height + " pixels" : "";
  }

  // ---------------------------------------------------------------- searching

  async function searchImage(file) {
    const p = params(0);
    const form = new FormData();
    form.append("image", file, file.name || "pasted image");
    form.append("k", p.k);
    form.append("bits", p.bits);
    const query = new URLSearchParams(p);
    query.delete("k");
    query.delete("bits");
    await run(() => api("api/search?" + query.toString(), { method: "POST", body: form }),
      (data) => {
        lastQuery = { kind: "image", file, codes: data.query.codes,
                      size: sizeText(data.query.width, data.query.height) };
        showImageQuery();
      }, false);
  }

  function showImageQuery() {
    const url = URL.createObjectURL(lastQuery.file);
    objectUrls.push(url);
    ui.queryImage.src = url;
    ui.queryTitle.textContent = lastQuery.file.name || "pasted image";
    ui.queryLabels.textContent = lastQuery.size;
  }

  function searchUrl(offset) {
    const p = params(offset);
    if (lastQuery.kind === "image") p.code = lastQuery.codes[p.bits];
    else p.id = String(lastQuery.id);
    return "api/search?" + new URLSearchParams(p).toString();
  }

  async function searchId(id) {
    lastQuery = { kind: "id", id };
    await run(() => api(searchUrl(0)), (data) => {
      setImage(ui.queryImage, data.query.thumbnail_url);
      ui.queryTitle.textContent = data.query.name + " (#" + data.query.id + ")";
      const about = [];
      if (data.query.album != null) about.push("album " + (data.query.album || "(top folder)"));
      if (data.query.labels.length) about.push(data.query.labels.join(", "));
      const size = sizeText(data.query.width, data.query.height);
      if (size) about.push(size);
      ui.queryLabels.textContent = about.join(" · ");
    }, false);
  }

  async function moreResults() {
    if (!lastQuery) return;
    await run(() => api(searchUrl(shownCount)), () => {}, true);
  }

  async function run(request, showQuery, append) {
    const mine = ++generation;
    clearError();
    const start = performance.now();
    try {
      const response = await request();
      const data = await response.json();
      const total = performance.now() - start;
      if (mine !== generation) return;
      if (!append) revokeUrls();
      showQuery(data);
      render(data, total, append);
    } catch (err) {
      if (mine === generation) showError(err);
    }
  }

  function fmt(ms) { return ms == null ? "–" : Number(ms).toFixed(1) + " ms"; }

  function card(r, extra) {
    const li = document.createElement("li");
    li.className = "result";
    li.dataset.id = String(r.id);
    li.dataset.distance = String(r.distance);
    const button = document.createElement("button");
    button.type = "button";
    button.className = "result-search";
    button.title = "search by this item (Enter)";
    const img = document.createElement("img");
    img.alt = r.name;
    img.loading = "lazy";
    img.width = 128;
    img.height = 128;
    setImage(img, r.thumbnail_url);
    const name = document.createElement("span");
    name.className = "result-name";
    name.textContent = r.name;
    const album = document.createElement("span");
    album.className = "result-album";
    album.textContent = r.album == null ? "" : "album " + (r.album || "(top folder)");
    const labels = document.createElement("span");
    labels.className = "result-labels";
    labels.textContent = r.labels.join(", ");
    const distance = document.createElement("span");
    distance.className = "result-distance";
    distance.textContent = "distance " + r.distance + (extra || "");
    button.append(img, distance, name, album, labels);
    button.addEventListener("click", () => { showView("search"); searchId(r.id); });
    const original = document.createElement("a");
    original.className = "result-original";
    original.href = r.original_url;
    original.target = "_blank";
    original.rel = "noopener";
    original.textContent = "open original";
    original.addEventListener("click", (event) => openOriginal(event, r.original_url, r.name));
    li.append(button, original);
    return li;
  }

  function render(data, totalMs, append) {
    ui.query.hidden = false;
    const cards = data.results.map((r) => card(r));
    if (append) ui.results.append(...cards);
    else ui.results.replaceChildren(...cards);
    shownCount = ui.results.children.length;
    let t = "server " + fmt(data.server_ms) + " (search " + fmt(data.search_ms);
    if (data.encode_ms != null) {
      t += ", decode " + fmt(data.decode_ms) + ", encode " + fmt(data.encode_ms)
        + " in a batch of " + data.encode_batch;
    }
    t += ") · total " + fmt(totalMs) + " · " + shownCount + " of " + data.count
      + " items at " + data.bits + " bits";
    if (data.album != null) t += " · album " + (data.album || "(top folder)");
    if (data.max_distance != null) t += " · within distance " + data.max_distance;
    ui.timings.textContent = t;
    ui.more.hidden = !data.more;
    ui.results.dataset.generation = String(generation);
    if (append && cards.length) cards[0].querySelector("button").focus();
  }

  function rerun() {
    if (!lastQuery) return;
    if (lastQuery.kind === "image") {
      // the page keeps the upload's codes: no second upload, no second encoding
      run(() => api(searchUrl(0)), () => showImageQuery(), false);
    } else {
      searchId(lastQuery.id);
    }
  }

  // ---------------------------------------------------------------- keyboard navigation

  function columns(grid) {
    const template = getComputedStyle(grid).gridTemplateColumns;
    return Math.max(1, template.split(" ").filter((s) => s.trim()).length);
  }

  ui.results.addEventListener("keydown", (event) => {
    const buttons = [...ui.results.querySelectorAll("button.result-search")];
    const at = buttons.indexOf(document.activeElement);
    if (at < 0) return;
    const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns(ui.results),
                   ArrowUp: -columns(ui.results) }[event.key];
    if (step === undefined) return;
    event.preventDefault();
    const next = Math.max(0, Math.min(buttons.length - 1, at + step));
    buttons[next].focus();
    if (next === buttons.length - 1 && !ui.more.hidden && event.key !== "ArrowUp") ui.more.focus();
  });

  // ---------------------------------------------------------------- duplicates view

  function showView(name) {
    const dup = name === "duplicates";
    ui.searchView.hidden = dup;
    ui.duplicatesView.hidden = !dup;
    ui.viewSearch.setAttribute("aria-pressed", String(!dup));
    ui.viewDuplicates.setAttribute("aria-pressed", String(dup));
    if (dup && !ui.dupGroups.dataset.loaded) loadDuplicates(1);
  }

  async function loadDuplicates(page) {
    clearError(ui.dupError);
    const p = { page: String(page) };
    const r = ui.dupRadius.value.trim();
    if (r !== "" && Number(r) >= 0) p.radius = String(Math.floor(Number(r)));
    ui.dupSummary.textContent = "finding duplicates…";
    try {
      const data = await (await api("api/duplicates?" + new URLSearchParams(p))).json();
      dupPage = data.page;
      ui.dupRadius.placeholder = String(data.radius);
      ui.dupSummary.textContent = data.total_groups + " groups (" + data.total_items
        + " items) within distance " + data.radius + " on " + data.bits + "-bit "
        + data.codes + " codes · " + fmt(data.server_ms);
      ui.dupPage.textContent = "page " + data.page + " of " + data.pages;
      ui.dupPrev.disabled = data.page <= 1;
      ui.dupNext.disabled = data.page >= data.pages;
      const groups = data.groups.map((members, i) => {
        const li = document.createElement("li");
        li.className = "dup-group";
        const title = document.createElement("h3");
        title.textContent = "group " + ((data.page - 1) * data.per_page + i + 1) + " · "
          + members.length + " items";
        const row = document.createElement("ol");
        row.className = "grid";
        row.append(...members.map((m) => {
          const c = card(m, m.exact ? " · same file" : "");
          c.classList.add("dup-member");
          c.dataset.exact = String(m.exact);
          return c;
        }));
        li.append(title, row);
        return li;
      });
      ui.dupGroups.replaceChildren(...groups);
      ui.dupGroups.dataset.loaded = "true";
      ui.dupGroups.dataset.page = String(data.page);
    } catch (err) {
      ui.dupSummary.textContent = "";
      showError(err, ui.dupError);
    }
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

  document.addEventListener("paste", (event) => {
    const data = event.clipboardData;
    if (!data) return;
    const target = event.target;
    const typing = target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA");
    const files = [...data.files].filter((f) => f.type.startsWith("image/"));
    if (!files.length) return; // text pasted into a field stays text
    if (typing && target.type === "password") return;
    event.preventDefault();
    showView("search");
    searchImage(files[0]);
  });

  ui.random.addEventListener("click", async () => {
    try {
      const item = await (await api("api/random")).json();
      await searchId(item.id);
    } catch (err) { showError(err); }
  });

  ui.bits.addEventListener("change", rerun);
  ui.k.addEventListener("change", rerun);
  ui.album.addEventListener("change", rerun);
  ui.maxDistance.addEventListener("change", rerun);
  ui.more.addEventListener("click", moreResults);
  ui.viewSearch.addEventListener("click", () => showView("search"));
  ui.viewDuplicates.addEventListener("click", () => showView("duplicates"));
  ui.dupLoad.addEventListener("click", () => loadDuplicates(1));
  ui.dupRadius.addEventListener("change", () => loadDuplicates(1));
  ui.dupPrev.addEventListener("click", () => loadDuplicates(dupPage - 1));
  ui.dupNext.addEventListener("click", () => loadDuplicates(dupPage + 1));

  loadInfo().catch(showError);
})();
