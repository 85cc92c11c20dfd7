// The console's only script: pages refresh their figures by themselves, without a reload.
"use strict";

// Fetches JSON; null when it failed. A lapsed session goes back to the sign-in page.
async function getJSON(path) {
  const answer = await fetch(path).catch(() => null);
  if (answer === null) return null;
  if (answer.redirected) {
    location.assign("/login");
    return null;
  }
  return answer.ok ? answer.json() : null;
}

// Overview: the figures every 5 s from /status.json (a reason being typed is kept); a reload
// when a target was paused or resumed elsewhere, unless one is being typed.
if (document.querySelector("tr[data-key]")) {
  setInterval(async () => {
    const found = await getJSON("/status.json");
    if (found === null) return;
    const rows = new Map(found.map((r) => [r.tenant + "/" + r.target, r]));
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
}

// A replay: each dead letter's outcome every 2 s, until none is still queued.
const replay = document.querySelector("[data-replay]");
if (replay) {
  const follow = setInterval(async () => {
    const outcomes = await getJSON("/replays/" + replay.dataset.replay + "/outcomes.json");
    if (outcomes === null) return;
    for (const cell of replay.querySelectorAll("[data-outcome]")) {
      const outcome = outcomes[cell.dataset.outcome];
      if (outcome !== undefined && cell.textContent !== outcome) cell.textContent = outcome;
    }
    if (!Object.values(outcomes).includes("still queued")) clearInterval(follow);
  }, 2000);
}
