/* mlxterp residual logit lens: draws the lens record with DOM text nodes only (no data parsed as HTML). */
(function () {
  "use strict";
  const HIGHLIGHT = "232, 89, 12";
  const WHITESPACE = new Map([[" ", "·"], ["\n", "↵"], ["\t", "⇥"], ["\r", "␍"]]);

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") node.textContent = String(value);
      else node.setAttribute(key, String(value));
    }
    for (const child of [].concat(children ?? [])) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function visible(text) {
    return text === "" ? "∅" : Array.from(text, (c) => WHITESPACE.get(c) ?? c).join("");
  }

  function pct(p) {
    return (100 * p).toPrecision(3) + "%";
  }

  function render(record) {
    const detail = el("div", { class: "lens-detail card" }, el("p", { class: "empty", text: "Hover a cell to see its top tokens." }));
    const show = (layer, pos) => {
      const rows = record.top[layer][pos].map(([tok, p]) =>
        el("div", { class: "row" }, [el("span", { class: "chip", text: visible(tok) }), el("span", { class: "num", text: pct(p) })]));
      detail.replaceChildren(el("h2", { text: `layer ${record.layers[layer]} · position ${pos} (after ${visible(record.tokens[pos])})` }), ...rows);
    };
    const head = el("tr", { class: "input" }, [el("th", { class: "layer", text: "layer \\ input" }),
      ...record.tokens.map((tok) => el("th", { text: visible(tok) }))]);
    const body = record.layers.map((layer, i) => el("tr", {}, [el("th", { class: "layer", text: String(layer) }),
      ...record.tokens.map((_, pos) => {
        const [tok, p] = record.top[i][pos][0];
        const hit = pos + 1 < record.tokens.length && tok === record.tokens[pos + 1];
        const cell = el("td", { class: hit ? "hit" : "", style: `background: rgba(${HIGHLIGHT}, ${Math.min(1, p).toFixed(3)})`,
          title: `${visible(tok)}  ${pct(p)}` }, visible(tok));
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
