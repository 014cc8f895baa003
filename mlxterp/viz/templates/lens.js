/* mlxterp residual logit lens: draws the lens record with DOM text nodes only (no data parsed as HTML). */
(function () {
  "use strict";
  const { el, chip, fmtPct } = window.MlxterpViz;  // feature.js, loaded before this script
  const HIGHLIGHT = "232, 89, 12";
  const WHITESPACE = new Map([[" ", "·"], ["\n", "↵"], ["\t", "⇥"], ["\r", "␍"]]);

  function visible(text) {
    return text === "" ? "∅" : Array.from(text, (c) => WHITESPACE.get(c) ?? c).join("");
  }

  function render(record) {
    const detail = el("div", { class: "lens-detail card" }, el("p", { class: "empty", text: "Hover a cell to see its top tokens." }));
    const show = (layer, pos) => {
      const rows = record.top[layer][pos].map(([tok, p]) =>
        el("div", { class: "row" }, [chip(tok), el("span", { class: "num", text: fmtPct(p) })]));
      detail.replaceChildren(el("h2", { text: `layer ${record.layers[layer]} · position ${pos} (after ${visible(record.tokens[pos])})` }), ...rows);
    };
    const head = el("tr", { class: "input" }, [el("th", { class: "layer", text: "layer \\ input" }),
      ...record.tokens.map((tok) => el("th", { text: visible(tok) }))]);
    const body = record.layers.map((layer, i) => el("tr", {}, [el("th", { class: "layer", text: String(layer) }),
      ...record.tokens.map((_, pos) => {
        const [tok, p] = record.top[i][pos][0];
        const hit = pos + 1 < record.tokens.length && tok === record.tokens[pos + 1];
        const cell = el("td", { class: hit ? "hit" : "", style: `background: rgba(${HIGHLIGHT}, ${Math.min(1, p).toFixed(3)})`,
          title: `${visible(tok)}  ${fmtPct(p)}` }, visible(tok));
        cell.addEventListener("mouseenter", () => show(i, pos));
        return cell;
      })]));
    return el("div", { class: "feature" }, [
      el("div", { class: "fheader" }, [el("h1", { text: "Residual logit lens" }),
        el("p", { class: "fmeta", text: `${record.model} · each layer's residual stream through the final norm and unembedding; ` +
          "cell colour = probability of its top token, blue frame = the actual next input token" })]),
      el("div", { class: "card lens-wrap" }, el("table", { class: "lens" }, [head, ...body])),
      detail,
    ]);
  }

  document.getElementById("lens").replaceChildren(render(window.MLXTERP_LENS));
})();
