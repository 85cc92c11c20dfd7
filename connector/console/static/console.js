// Refreshes the overview's figures every 5 s from /status.json (no reload, so a reason being
// typed is kept); reloads when a target was paused or resumed elsewhere, unless one is typed.
"use strict";
setInterval(async () => {
  const answer = await fetch("/status.json").catch(() => null);
  if (answer === null) return;
  if (answer.redirected) return location.assign("/login"); // the session has expired
  if (!answer.ok) return;
  const rows = new Map((await answer.json()).map((r) => [r.tenant + "/" + r.target, r]));
  for (const tr of document.querySelectorAll("tr[data-key]")) {
    const row = rows.get(tr.dataset.key);
    if (!row) continue;
    if (String(row.paused) !== tr.dataset.paused && !document.activeElement.matches("input")) {
      return location.reload();
    }
    for (const cell of tr.querySelectorAll("[data-field]")) {
      cell.textContent = row.shown[cell.dataset.field];
    }
  }
}, 5000);
