// The jobs page: re-reads GET /v1/jobs every few seconds and redraws the rows (textContent only).
"use strict";

(function () {
  const POLL_MS = 2000;
  const S = window.Spartan;

  function row(job) {
    const j = S.jobSummary(job);
    const status = S.el("td", {}, [S.el("span", { class: `badge status-${j.status}`, text: j.status })]);
    if (j.status === "running" && j.phase) status.appendChild(S.el("div", { class: "sub", text: j.phase }));
    return S.el("tr", { "data-job-id": j.id }, [
      S.el("td", {}, [
        S.el("a", { href: `/ui/jobs/${encodeURIComponent(j.id)}`, class: "job-name", text: j.name || j.id }),
        S.el("div", { class: "sub mono", text: j.id }),
      ]),
      status,
      S.el("td", { class: "mono", text: j.model }),
      S.el("td", { text: j.target }),
      S.el("td", { class: "num", text: j.accuracy }),
      S.el("td", { class: "num", text: j.sparsity }),
      S.el("td", { class: "num", text: j.cost_fraction }),
      S.el("td", { class: "mono", text: j.created }),
    ]);
  }

  async function refresh(table) {
    const status = table.dataset.status;
    const query = new URLSearchParams({ limit: "100" });
    if (status) query.set("status", status);
    const page = await S.api(`/v1/jobs?${query}`);
    document.getElementById("jobs-body").replaceChildren(...page.data.map(row));
    document.getElementById("job-count").textContent = String(page.count);
    document.getElementById("jobs-empty").classList.toggle("hidden", page.data.length > 0);
    table.dataset.refreshed = String(Number(table.dataset.refreshed || 0) + 1);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const table = document.getElementById("jobs-table");
    if (!table) return;
    const tick = async () => {
      if (!document.hidden) {
        try {
          await refresh(table);
        } catch (_err) {
          /* the next tick tries again */
        }
      }
      setTimeout(tick, POLL_MS);
    };
    setTimeout(tick, POLL_MS);
  });
})();
