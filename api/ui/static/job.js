// One job: live training curves, per-layer density and cost, status and cancel.
//
// The series start from GET /v1/jobs/{id}/metrics (every stored point and epoch) where the
// service has it, then grow from the job's event stream (GET /v1/jobs/{id}/events), resumed
// after the series' last record with Last-Event-ID. Without the metrics endpoint the curves
// start at the first event and the epochs come from the final metrics.
"use strict";

(function () {
  const S = window.Spartan;
  const C = S.palette;

  function lineChart(id, datasets, yOptions) {
    const canvas = document.getElementById(id);
    return new window.Chart(canvas, {
      type: "line",
      data: {
        datasets: datasets.map((d, i) => ({
          label: d.label,
          data: [],
          borderColor: d.color || C[i],
          backgroundColor: d.color || C[i],
          borderWidth: 1.6,
          borderDash: d.dash,
          pointRadius: d.points ? 3 : 0,
          tension: 0.15,
          parsing: false,
        })),
      },
      options: {
        interaction: { mode: "nearest", intersect: false },
        scales: {
          x: { type: "linear", title: { display: true, text: "step" }, ticks: { maxTicksLimit: 6 } },
          y: Object.assign({ ticks: { maxTicksLimit: 5 } }, yOptions || {}),
        },
        plugins: { legend: { display: datasets.length > 1, position: "bottom" } },
      },
    });
  }

  const percentAxis = { ticks: { maxTicksLimit: 5, callback: (v) => `${Math.round(v * 1000) / 10}%` } };

  function makeCurves() {
    return {
      loss: { chart: lineChart("chart-loss", [{ label: "train loss" }]), fields: ["loss"] },
      top1: {
        chart: lineChart("chart-top1", [{ label: "validation top-1", color: C[1], points: true }], percentAxis),
        fields: ["val_top1"],
        epochs: true,
      },
      sparsity: { chart: lineChart("chart-sparsity", [{ label: "sparsity", color: C[2] }], percentAxis), fields: ["sparsity"] },
      cost: {
        chart: lineChart(
          "chart-cost",
          [{ label: "kept", color: C[3] }, { label: "scheduled", color: C[6], dash: [4, 3] }],
          percentAxis,
        ),
        fields: ["cost_fraction", "scheduled_cost_fraction"],
      },
      beta: { chart: lineChart("chart-beta", [{ label: "β", color: C[5] }]), fields: ["beta"] },
      lr: { chart: lineChart("chart-lr", [{ label: "learning rate", color: C[4] }]), fields: ["lr"] },
    };
  }

  // Drop the entries a resumed run repeats (key >= the new one), as spartan/series.py does.
  function appendKeyed(series, item, key) {
    const at = item[key];
    if (S.isNum(at)) while (series.length && series[series.length - 1][key] >= at) series.pop();
    series.push(item);
  }

  function makeState(curves) {
    const points = [];
    const epochs = [];
    let dirty = false;

    function redraw() {
      if (!dirty) return;
      dirty = false;
      for (const c of Object.values(curves)) {
        const source = c.epochs ? epochs : points;
        c.fields.forEach((f, i) => {
          c.chart.data.datasets[i].data = source
            .filter((p) => S.isNum(p[f]) && S.isNum(p.step))
            .map((p) => ({ x: p.step, y: p[f] }));
        });
        c.chart.update("none");
      }
      const count = document.getElementById("point-count");
      count.textContent = String(points.length);
      count.dataset.points = String(points.length);
      document.getElementById("epoch-count").textContent = String(epochs.length);
    }

    return {
      points,
      epochs,
      addPoint(p) {
        if (!p || p.phase !== "training" || !S.isNum(p.step)) return;
        appendKeyed(points, p, "step");
        dirty = true;
      },
      addEpoch(e) {
        if (!e || !S.isNum(e.epoch)) return;
        appendKeyed(epochs, e, "epoch");
        dirty = true;
      },
      setEpochs(list) {
        epochs.length = 0;
        for (const e of list || []) appendKeyed(epochs, e, "epoch");
        dirty = true;
      },
      redraw,
    };
  }

  function showStatus(status, progress, cancelRequested) {
    S.setBadge(document.getElementById("job-status"), status);
    const p = progress || {};
    document.getElementById("progress-phase").textContent = p.phase || status;
    if (S.isNum(p.step) && S.isNum(p.total_steps) && p.total_steps > 0) {
      document.getElementById("progress-step").textContent = `step ${p.step} / ${p.total_steps}`;
      const done = status === "succeeded" ? 1 : Math.min(p.step / p.total_steps, 1);
      document.getElementById("progress-fill").style.width = `${(done * 100).toFixed(1)}%`;
    }
    if (S.isNum(p.accuracy)) document.getElementById("tile-accuracy").textContent = S.pct(p.accuracy);
    if (S.isNum(p.sparsity)) document.getElementById("tile-sparsity").textContent = S.pct(p.sparsity);
    if (S.isNum(p.cost_fraction)) document.getElementById("tile-cost").textContent = S.pct(p.cost_fraction);
    const button = document.getElementById("cancel-button");
    if (button && (cancelRequested || ["succeeded", "failed", "cancelled"].includes(status))) {
      button.disabled = true;
      button.textContent = cancelRequested && status === "running" ? "Cancelling…" : "Ended";
    }
  }

  function layerCharts(layers, unit) {
    if (!layers.length) return;
    const names = layers.map((l) => l.name);
    const height = `${Math.max(220, 16 * layers.length + 70)}px`;
    for (const id of ["chart-layers-density", "chart-layers-cost"]) {
      document.getElementById(id).parentElement.style.height = height;
    }
    const common = {
      indexAxis: "y",
      plugins: { legend: { position: "bottom" } },
    };
    const density = new window.Chart(document.getElementById("chart-layers-density"), {
      type: "bar",
      data: {
        labels: names,
        datasets: [{ label: "density (kept fraction of entries)", data: layers.map((l) => l.density), backgroundColor: C[0] }],
      },
      options: Object.assign({}, common, {
        scales: {
          x: { min: 0, max: 1, ticks: { callback: (v) => `${Math.round(v * 100)}%` } },
          y: { ticks: { autoSkip: false, font: { size: 10 } } },
        },
      }),
    });
    const cost = new window.Chart(document.getElementById("chart-layers-cost"), {
      type: "bar",
      data: {
        labels: names,
        datasets: [
          { label: `dense cost (${unit || "cost"})`, data: layers.map((l) => l.dense_cost), backgroundColor: "#cbd5e1" },
          { label: `kept cost (${unit || "cost"})`, data: layers.map((l) => l.sparse_cost), backgroundColor: C[1] },
        ],
      },
      options: Object.assign({}, common, {
        scales: { x: { beginAtZero: true }, y: { ticks: { autoSkip: false, font: { size: 10 } } } },
      }),
    });
    window.spartanJob.layerCharts = { density, cost };
  }

  // Follow GET /v1/jobs/{id}/logs from the last X-Log-Offset until the job has ended.
  async function followLog(jobId) {
    const box = document.getElementById("job-log");
    if (!box) return;
    let offset = 0;
    const url = `/v1/jobs/${encodeURIComponent(jobId)}/logs`;
    for (;;) {
      let ended = false;
      try {
        const r = await fetch(`${url}?offset=${offset}`, { headers: S.headers({ Accept: "text/plain" }) });
        if (r.status === 404 || r.status === 405) return; // a service without job logs
        if (r.ok) {
          const text = await r.text();
          offset = Number(r.headers.get("X-Log-Offset") || offset + text.length);
          if (text) {
            const atEnd = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
            box.appendChild(document.createTextNode(text));
            if (atEnd) box.scrollTop = box.scrollHeight;
          }
          ended = ["succeeded", "failed", "cancelled"].includes(r.headers.get("X-Job-Status")) && !text;
        }
      } catch (_err) {
        /* try again */
      }
      if (ended) {
        if (!box.textContent) box.textContent = "(no log)";
        return;
      }
      await new Promise((res) => setTimeout(res, 2000));
    }
  }

  async function loadMetrics(jobId) {
    try {
      return await S.api(`/v1/jobs/${encodeURIComponent(jobId)}/metrics`, { noRedirect: true });
    } catch (_err) {
      return null; // a service without the metrics endpoint: the event stream only
    }
  }

  document.addEventListener("DOMContentLoaded", async () => {
    const page = JSON.parse(document.getElementById("page-data").textContent);
    const curves = makeCurves();
    const state = makeState(curves);
    window.spartanJob = { state, curves, page };
    layerCharts(page.layers, page.cost_unit);
    state.setEpochs(page.history);

    const cancel = document.getElementById("cancel-button");
    if (cancel) {
      cancel.addEventListener("click", async () => {
        cancel.disabled = true;
        try {
          const job = await S.api(`/v1/jobs/${encodeURIComponent(page.job_id)}/cancel`, { method: "POST" });
          showStatus(job.status, job.progress, job.cancel_requested);
        } catch (err) {
          cancel.disabled = false;
          window.alert(`Cancel failed: ${err.message}`);
        }
      });
    }

    followLog(page.job_id);
    const metrics = await loadMetrics(page.job_id);
    let lastEventId;
    let hasMetrics = false;
    if (metrics) {
      hasMetrics = true;
      for (const p of metrics.points || []) state.addPoint(Object.assign({ phase: "training" }, p));
      if ((metrics.epochs || []).length) state.setEpochs(metrics.epochs);
      if (metrics.last_id !== undefined) lastEventId = metrics.last_id;
    }
    state.redraw();

    const streamState = document.getElementById("stream-state");
    S.streamEvents(`/v1/jobs/${encodeURIComponent(page.job_id)}/events`, {
      lastEventId,
      onState: (s) => {
        streamState.textContent = s;
      },
      onEvent: async (type, data) => {
        if (type === "progress" && data) {
          const progress = data.progress || null;
          if (data.status) showStatus(data.status, progress, data.cancel_requested);
          state.addPoint(progress);
        } else if (type === "epoch" && data) {
          // {id, status, epoch: the record}
          state.addEpoch(data.epoch && typeof data.epoch === "object" ? data.epoch : data);
        } else if (type === "end" && data) {
          showStatus(data.status, data.progress, false);
          const history = (data.metrics && data.metrics.history) || [];
          if (history.length) state.setEpochs(history);
          else if (hasMetrics) {
            const fresh = await loadMetrics(page.job_id);
            if (fresh) state.setEpochs(fresh.epochs);
          }
          state.redraw();
          // The page was drawn before the job ended: draw it again for the artifacts.
          if (!page.finished) setTimeout(() => window.location.reload(), 1500);
        }
        state.redraw();
      },
    });
  });
})();
