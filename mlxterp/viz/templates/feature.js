/* mlxterp feature view: draws a feature record with DOM text nodes only, so no data is ever parsed as HTML. */
(function () {
  "use strict";

  const SVG_NS = "http://www.w3.org/2000/svg";
  const WHITESPACE = new Map([[" ", "·"], ["\n", "↵"], ["\t", "⇥"], ["\r", "␍"], ["\u00a0", "⍽"]]);
  const HIGHLIGHT = "232, 89, 12";

  function fill(node, attrs, children) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (key === "text") node.textContent = String(value);
      else node.setAttribute(key, String(value));
    }
    for (const child of [].concat(children ?? [])) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function el(tag, attrs, children) {
    return fill(document.createElement(tag), attrs, children);
  }

  function svgEl(tag, attrs, children) {
    return fill(document.createElementNS(SVG_NS, tag), attrs, children);
  }

  function fmtNum(value, digits = 4) {
    if (typeof value !== "number" || !isFinite(value)) return String(value ?? "—");
    return value === 0 ? "0" : String(Number(value.toPrecision(digits)));
  }

  function fmtPct(fraction) {
    return typeof fraction === "number" && isFinite(fraction) ? fmtNum(fraction * 100, 3) + "%" : "—";
  }

  /** Text nodes for a token, with whitespace drawn as faint visible marks (· ↵ ⇥) and "∅" for an empty token. */
  function visibleText(text) {
    const s = String(text ?? "");
    if (s === "") return [el("span", { class: "ws", text: "∅" })];
    const nodes = [];
    let run = "";
    let runIsSpace = false;
    const flush = () => {
      if (run) nodes.push(runIsSpace ? el("span", { class: "ws", text: run }) : document.createTextNode(run));
      run = "";
    };
    for (const ch of s) {
      const mark = WHITESPACE.get(ch);
      if ((mark !== undefined) !== runIsSpace) {
        flush();
        runIsSpace = mark !== undefined;
      }
      run += mark ?? ch;
    }
    flush();
    return nodes;
  }

  function chip(token) {
    return el("span", { class: "chip", title: JSON.stringify(String(token)) }, visibleText(token));
  }

  function exampleRow(example, featureMax) {
    const acts = example.activations || [];
    const scale = featureMax > 0 ? featureMax : Math.max(0, ...acts) || 1;
    const tokens = (example.tokens || []).flatMap((token, i, all) => {
      const act = acts[i] ?? 0;
      const alpha = Math.max(0, Math.min(1, act / scale));
      const span = el("span", {
        class: i === example.peak ? "tok peak" : "tok",
        style: alpha > 0 ? `background-color: rgba(${HIGHLIGHT}, ${alpha.toFixed(3)})` : null,
        "data-act": fmtNum(act),
      }, visibleText(token));
      // Spaces are drawn as "·", so the browser sees no word breaks: offer one where a word starts.
      return i > 0 && (/^\s/.test(token) || /\s$/.test(all[i - 1])) ? [el("wbr"), span] : [span];
    });
    return el("div", { class: "example" }, [
      el("span", { class: "ex-max", title: "highest activation in this example", text: fmtNum(example.max_activation) }),
      el("div", { class: "ex-tokens" }, tokens),
    ]);
  }

  function examples(list, featureMax) {
    if (!list || !list.length) return el("p", { class: "empty", text: "No examples: the feature did not fire on the dataset." });
    return el("div", { class: "examples" }, list.map((ex) => exampleRow(ex, featureMax)));
  }

  /**
   * An SVG bar chart of `{edges, counts}`. `ticks` lists x-axis values (default: four evenly spaced), `tick` formats them.
   */
  function histogram(hist, { tick = fmtNum, ticks = null, xlabel = "", width = 320, height = 130 } = {}) {
    const edges = (hist && hist.edges) || [];
    const counts = (hist && hist.counts) || [];
    if (!counts.length || edges.length !== counts.length + 1) return el("p", { class: "empty", text: "No histogram data." });
    const pad = { left: 8, right: 8, top: 6, bottom: xlabel ? 32 : 18 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const lo = edges[0];
    const span = edges[edges.length - 1] - lo || 1;
    const x = (v) => pad.left + ((v - lo) / span) * plotW;
    const maxCount = Math.max(1, ...counts);
    const base = pad.top + plotH;
    const bars = counts.map((count, i) => {
      const h = (count / maxCount) * plotH;
      const w = Math.max(0.5, x(edges[i + 1]) - x(edges[i]) - 1);
      return svgEl("rect", { class: "bar", x: x(edges[i]).toFixed(2), y: (base - h).toFixed(2), width: w.toFixed(2), height: h.toFixed(2) },
        svgEl("title", { text: `${tick(edges[i])} – ${tick(edges[i + 1])}: ${count}` }));
    });
    const tickLabels = (ticks || [0, 1 / 3, 2 / 3, 1].map((f) => lo + f * span)).map((value) => {
      const f = (value - lo) / span;
      const anchor = f < 0.05 ? "start" : f > 0.95 ? "end" : "middle";
      return svgEl("text", { x: x(value).toFixed(2), y: base + 13, "text-anchor": anchor, text: tick(value) });
    });
    const label = xlabel ? svgEl("text", { x: width / 2, y: height - 3, "text-anchor": "middle", text: xlabel }) : null;
    return svgEl("svg", { class: "hist", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": xlabel || "histogram" }, [
      ...bars,
      svgEl("line", { class: "axis", x1: pad.left, x2: width - pad.right, y1: base, y2: base }),
      ...tickLabels,
      label,
    ]);
  }

  function card(title, content) {
    return el("section", { class: "card" }, [el("h2", { text: title }), content]);
  }

  function stat(name, value, hint) {
    return el("div", { class: "stat", title: hint }, [el("span", { class: "k", text: name }), el("span", { class: "v", text: value })]);
  }

  function metaLine(meta) {
    const m = meta || {};
    return [
      m.model,
      m.layer !== undefined && m.layer !== null ? `layer ${m.layer}` : null,
      m.component,
      m.d_model && m.d_hidden ? `${m.d_model} → ${m.d_hidden} features` : null,
      m.n_tokens ? `${Number(m.n_tokens).toLocaleString("en-US")} tokens` : null,
    ].filter(Boolean).join(" · ");
  }

  function logitTable(title, rows, kind) {
    const body = rows && rows.length
      ? el("table", {}, rows.map(([token, value]) => el("tr", {}, [el("td", {}, chip(token)), el("td", { class: "num", text: fmtNum(value) })])))
      : el("p", { class: "empty", text: "—" });
    return el("div", { class: `logits ${kind}` }, [el("h4", { text: title }), body]);
  }

  function similarList(similar, { featureHref, labelOf }) {
    if (!similar || !similar.length) return el("p", { class: "empty", text: "None." });
    return el("ol", { class: "similar" }, similar.map(([index, cosine]) => {
      const href = featureHref ? featureHref(index) : null;
      const label = labelOf ? labelOf(index) : null;
      const name = el(href ? "a" : "span", { class: "flink", href }, [`#${index}`, label ? el("span", { class: "muted", text: ` ${label}` }) : null]);
      return el("li", {}, [name, el("span", { class: "num muted", text: `cos ${fmtNum(cosine)}` })]);
    }));
  }

  /**
   * The full view of one feature record. `options.featureHref(index)` links similar features (null: no link),
   * `options.labelOf(index)` names them.
   */
  function renderFeature(record, meta, options = {}) {
    const lens = record.logit_lens || {};
    const header = el("header", { class: "fheader" }, [
      el("div", { class: "ftitle" }, [
        el("h1", { text: `Feature ${record.index}` }),
        el("span", { class: record.label ? "flabel" : "flabel muted", text: record.label || "unlabelled" }),
      ]),
      el("p", { class: "fmeta", text: metaLine(meta) }),
      el("div", { class: "stats" }, [
        stat("Density", fmtPct(record.frequency), "fraction of tokens where the feature is active"),
        stat("Mean activation", fmtNum(record.mean_activation), "mean over the tokens where it is active"),
        stat("Max activation", fmtNum(record.max_activation), "highest activation seen"),
      ]),
    ]);
    const side = el("div", { class: "fside" }, [
      card("Activation histogram", histogram(record.histogram, { xlabel: "activation (when active)" })),
      card("Logit lens", el("div", { class: "logit-grid" }, [
        logitTable("Promoted", lens.top, "pos"),
        logitTable("Suppressed", lens.bottom, "neg"),
      ])),
      card("Similar features", similarList(record.similar, options)),
    ]);
    const bands = (record.quantile_examples || []).filter((band) => band.examples && band.examples.length);
    const main = el("div", { class: "fmain" }, [
      el("section", { class: "card top-examples" }, [el("h2", { text: "Top activations" }), examples(record.top_examples, record.max_activation)]),
      bands.length ? el("section", { class: "card quantiles" }, [
        el("h2", { text: "Activation bands" }),
        ...bands.flatMap((band) => [el("h3", { text: band.label }), examples(band.examples, record.max_activation)]),
      ]) : null,
    ]);
    return el("article", { class: "feature", "data-feature": record.index }, [header, el("div", { class: "fgrid" }, [side, main])]);
  }

  window.MlxterpViz = { el, chip, fmtNum, fmtPct, histogram, metaLine, renderFeature };
})();
