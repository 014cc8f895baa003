/* mlxterp dashboard: a sortable, searchable feature list and a detail view routed by the URL hash `#feature=N`. */
(function () {
  "use strict";

  const V = window.MlxterpViz;
  const el = V.el;
  const DATA = window.MLXTERP_DASHBOARD;
  const ROWS_PER_PAGE = 500;
  const SORT_FIELDS = { index: "index", frequency: "frequency", max: "max_activation", mean: "mean_activation" };

  const listBody = document.querySelector("#feature-list tbody");
  const detail = document.getElementById("detail");
  const search = document.getElementById("search");
  const count = document.getElementById("count");

  if (!DATA || !Array.isArray(DATA.features)) {
    detail.replaceChildren(el("p", { class: "empty", text: "data.js is missing or invalid: write this folder again with mlxterp.viz.write_dashboard(data, out_dir)." }));
    return;
  }

  const features = DATA.features;
  const byIndex = new Map(features.map((f) => [f.index, f]));
  const haystacks = new Map();
  const state = { sort: "index", desc: false, query: "", limit: ROWS_PER_PAGE, selected: null, shown: [] };

  /** Lower-case text searched by the box: label, logit-lens tokens and the text of every example. */
  function haystack(f) {
    if (!haystacks.has(f.index)) {
      const lens = f.logit_lens || {};
      const examples = (f.top_examples || []).concat(...(f.quantile_examples || []).map((band) => band.examples || []));
      const parts = [f.label || ""]
        .concat([...(lens.top || []), ...(lens.bottom || [])].map(([token]) => token))
        .concat(examples.map((ex) => (ex.tokens || []).join("")));
      haystacks.set(f.index, parts.join("\u0000").toLowerCase());
    }
    return haystacks.get(f.index);
  }

  function matches(f, query) {
    if (!query) return true;
    const byNumber = /^#?(\d+)$/.exec(query);
    if (byNumber && f.index === Number(byNumber[1])) return true;
    return !query.startsWith("#") && haystack(f).includes(query);
  }

  function sortValue(f) {
    const v = f[SORT_FIELDS[state.sort]];
    return typeof v === "number" && !isNaN(v) ? v : -Infinity;
  }

  function visibleFeatures() {
    const sign = state.desc ? -1 : 1;
    return features
      .filter((f) => matches(f, state.query))
      .sort((a, b) => sign * (sortValue(a) - sortValue(b)) || a.index - b.index);
  }

  function preview(f) {
    if (f.label) return el("span", { text: f.label });
    const peaks = [...new Set((f.top_examples || []).map((ex) => (ex.tokens || [])[ex.peak]).filter((t) => t !== undefined))];
    return peaks.length ? peaks.slice(0, 4).map(V.chip) : el("span", { class: "muted", text: "never fired" });
  }

  function row(f) {
    return el("tr", { "data-index": f.index, class: f.index === state.selected ? "selected" : null }, [
      el("td", { class: "num", text: f.index }),
      el("td", { class: "desc" }, preview(f)),
      el("td", { class: "num", text: V.fmtPct(f.frequency) }),
      el("td", { class: "num", text: V.fmtNum(f.max_activation) }),
    ]);
  }

  function renderList() {
    state.shown = visibleFeatures();
    const rows = state.shown.slice(0, state.limit).map(row);
    if (state.shown.length > state.limit) {
      rows.push(el("tr", { class: "more" }, el("td", { colspan: 4, text: `Show ${Math.min(ROWS_PER_PAGE, state.shown.length - state.limit)} more…` })));
    }
    listBody.replaceChildren(...rows);
    count.textContent = `${state.shown.length} of ${features.length} features`;
    for (const th of document.querySelectorAll("#feature-list th[data-sort]")) {
      const active = th.dataset.sort === state.sort;
      th.setAttribute("aria-sort", active ? (state.desc ? "descending" : "ascending") : "none");
    }
  }

  function markSelected() {
    for (const tr of listBody.querySelectorAll("tr.selected")) tr.classList.remove("selected");
    const tr = listBody.querySelector(`tr[data-index="${state.selected}"]`);
    if (tr) {
      tr.classList.add("selected");
      tr.scrollIntoView({ block: "nearest" });
    }
  }

  /** Whole powers of ten inside the log10 edges of the density histogram: its x-axis ticks. */
  function decades(hist) {
    const edges = (hist && hist.edges) || [];
    if (edges.length < 2) return null;
    const found = [];
    for (let d = Math.ceil(edges[0]); d <= Math.floor(edges[edges.length - 1]); d++) found.push(d);
    return found.length >= 2 ? found : null;
  }

  function renderOverview() {
    const freqs = features.map((f) => f.frequency).filter((v) => typeof v === "number").sort((a, b) => a - b);
    const dead = freqs.filter((v) => v === 0).length;
    const median = freqs.length ? freqs[Math.floor(freqs.length / 2)] : NaN;
    const stat = (k, v) => el("div", { class: "stat" }, [el("span", { class: "k", text: k }), el("span", { class: "v", text: v })]);
    document.title = `${DATA.model || "mlxterp"} · features`;
    detail.replaceChildren(el("div", { class: "overview" }, [
      el("header", { class: "fheader" }, [
        el("div", { class: "ftitle" }, el("h1", { text: "Features" })),
        el("p", { class: "fmeta", text: V.metaLine(DATA) }),
        el("div", { class: "stats" }, [
          stat("Features shown", features.length.toLocaleString("en-US")),
          stat("Dead (never fired)", dead.toLocaleString("en-US")),
          stat("Median density", V.fmtPct(median)),
        ]),
      ]),
      el("section", { class: "card density" }, [
        el("h2", { text: "Feature density" }),
        V.histogram(DATA.density_histogram, {
          tick: (x) => V.fmtPct(10 ** x),
          ticks: decades(DATA.density_histogram),
          xlabel: "fraction of tokens where a feature fires (log scale)",
          width: 720,
          height: 190,
        }),
      ]),
      el("p", { class: "muted", text: "Pick a feature from the list (or use ↑/↓), or search by index, label, logit-lens token or example text." }),
    ]));
  }

  function renderFeature(index) {
    const f = byIndex.get(index);
    if (!f) {
      detail.replaceChildren(el("p", { class: "empty", text: `Feature ${index} is not in this dashboard.` }));
      return;
    }
    document.title = `Feature ${f.index}${f.label ? " · " + f.label : ""} · mlxterp`;
    detail.replaceChildren(
      el("a", { class: "crumb", href: "#", text: "← Overview" }),
      V.renderFeature(f, DATA, {
        featureHref: (i) => (byIndex.has(i) ? `#feature=${i}` : null),
        labelOf: (i) => (byIndex.has(i) ? byIndex.get(i).label : null),
      }),
    );
  }

  function route() {
    const m = /^#feature=(\d+)$/.exec(location.hash);
    state.selected = m ? Number(m[1]) : null;
    if (state.selected === null) renderOverview();
    else renderFeature(state.selected);
    detail.scrollTop = 0;
    markSelected();
  }

  function step(offset) {
    const pos = state.shown.findIndex((f) => f.index === state.selected);
    const next = state.shown[Math.max(0, Math.min(state.shown.length - 1, pos + offset))];
    if (next) location.hash = `feature=${next.index}`;
  }

  let searchTimer = null;
  search.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      state.query = search.value.trim().toLowerCase();
      state.limit = ROWS_PER_PAGE;
      renderList();
      markSelected();
    }, features.length > 2000 ? 150 : 0);
  });

  document.querySelector("#feature-list thead").addEventListener("click", (event) => {
    const th = event.target.closest("th[data-sort]");
    if (!th) return;
    state.desc = th.dataset.sort === state.sort ? !state.desc : th.dataset.sort !== "index";
    state.sort = th.dataset.sort;
    renderList();
    markSelected();
  });

  listBody.addEventListener("click", (event) => {
    const tr = event.target.closest("tr");
    if (!tr) return;
    if (tr.classList.contains("more")) {
      state.limit += ROWS_PER_PAGE;
      renderList();
      markSelected();
    } else {
      location.hash = `feature=${tr.dataset.index}`;
    }
  });

  document.addEventListener("keydown", (event) => {
    if (event.target === search || event.altKey || event.ctrlKey || event.metaKey) return;
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      step(event.key === "ArrowDown" ? 1 : -1);
    }
  });

  window.addEventListener("hashchange", route);
  document.getElementById("meta").textContent = V.metaLine(DATA);
  renderList();
  route();
})();
