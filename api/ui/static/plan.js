// The plan explorer: the form becomes a POST /v1/plans body; the answer becomes a per-layer
// chart and table.
"use strict";

(function () {
  const S = window.Spartan;
  let chart = null;

  function shape(text, sep) {
    const parts = text.split(sep).map((t) => Number.parseInt(t.trim(), 10));
    return parts.length === 2 && parts.every((n) => Number.isInteger(n) && n > 0) ? parts : null;
  }

  function body(form) {
    const f = new FormData(form);
    const input = String(f.get("input_size")).split("x").map((t) => Number.parseInt(t, 10));
    const out = {
      model: {
        source: f.get("source"),
        name: String(f.get("name")).trim(),
        input_size: input,
        num_classes: Number.parseInt(String(f.get("num_classes")), 10),
      },
      cost_model: { name: f.get("cost_model"), params: JSON.parse(String(f.get("cost_params") || "{}") || "{}") },
      distribution: f.get("distribution"),
    };
    const structure = f.get("structure");
    const given = String(f.get("shape") || "").trim();
    if (structure === "blocks") out.block_shape = shape(given || "4x4", "x");
    if (structure === "nm") out.nm = shape(given || "2:4", ":");
    const value = String(f.get("target_value") || "").trim();
    if (value !== "") out[f.get("target_kind")] = Number(value);
    const exclude = String(f.get("exclude") || "").split(",").map((t) => t.trim()).filter(Boolean);
    if (exclude.length) out.exclude = exclude;
    return out;
  }

  function draw(plan) {
    const layers = plan.plan.layers || [];
    const totals = plan.plan.totals || {};
    const names = layers.map((l) => l.name);
    const box = document.getElementById("chart-plan").parentElement;
    box.style.height = `${Math.max(260, 16 * layers.length + 80)}px`;
    if (chart) chart.destroy();
    chart = new window.Chart(document.getElementById("chart-plan"), {
      type: "bar",
      data: {
        labels: names,
        datasets: [
          {
            label: "kept fraction (density)",
            data: layers.map((l) => l.density),
            backgroundColor: layers.map((l) => (l.masked ? S.palette[0] : "#cbd5e1")),
          },
        ],
      },
      options: {
        indexAxis: "y",
        scales: {
          x: { min: 0, max: 1, ticks: { callback: (v) => `${Math.round(v * 100)}%` } },
          y: { ticks: { autoSkip: false, font: { size: 10 } } },
        },
        plugins: {
          legend: { display: false },
          tooltip: { callbacks: { label: (c) => `density ${S.pct(c.raw, 2)}` } },
        },
      },
    });
    window.spartanPlan = { chart, plan };

    const rows = layers.map((l) =>
      S.el("tr", { class: l.masked ? "" : "muted" }, [
        S.el("td", { class: "mono", text: l.name }),
        S.el("td", { class: "mono", text: (l.weight_shape || []).join("×") }),
        S.el("td", { class: "num", text: S.num(l.entries, 0) }),
        S.el("td", { class: "num", text: S.num(l.kept_entries, 0) }),
        S.el("td", { class: "num", text: S.pct(l.density) }),
        S.el("td", { class: "num", text: S.num(l.dense_cost) }),
        S.el("td", { class: "num", text: S.num(l.sparse_cost) }),
      ]),
    );
    document.getElementById("plan-body").replaceChildren(...rows);
    document.getElementById("plan-table-card").classList.remove("hidden");
    document.getElementById("plan-summary").textContent =
      `${plan.model} · ${layers.length} layers · ${S.pct(totals.sparsity)} of masked weights removed · ` +
      `cost ${S.pct(totals.cost_fraction)} of dense (target ${S.pct(plan.target)}, ${totals.unit || plan.cost_model})`;
  }

  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("plan-form");
    const error = document.getElementById("plan-error");
    const source = document.getElementById("model-source");
    const structure = document.getElementById("structure");
    const shapeInput = document.getElementById("structure-shape");
    const targetKind = document.getElementById("target-kind");
    const costModel = document.getElementById("cost-model");

    source.addEventListener("change", () => {
      document.getElementById("model-name").setAttribute("list", `models-${source.value}`);
    });
    structure.addEventListener("change", () => {
      shapeInput.disabled = structure.value === "unstructured";
      shapeInput.value = { blocks: "4x4", nm: "2:4" }[structure.value] || "";
    });
    // A sparsity target is a params budget; other cost models take a cost fraction.
    costModel.addEventListener("change", () => {
      if (costModel.value !== "params") targetKind.value = "cost_fraction";
    });

    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      error.classList.add("hidden");
      const button = document.getElementById("plan-submit");
      button.disabled = true;
      button.textContent = "Planning…";
      try {
        draw(await S.api("/v1/plans", { method: "POST", body: body(form) }));
      } catch (err) {
        error.textContent = err instanceof SyntaxError ? `cost model params: ${err.message}` : err.message;
        error.classList.remove("hidden");
      } finally {
        button.disabled = false;
        button.textContent = "Plan";
      }
    });
  });
})();
