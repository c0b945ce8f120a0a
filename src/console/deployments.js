// The deployments page's live refresh (served as /ui/static/deployments.js):
// every few seconds, fetch the tables alone from the element's
// `data-refresh` route and swap them in. The page works without it (it
// reloads itself every 5 s from a <noscript> meta refresh).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const live = document.querySelector("[data-refresh]");
  if (!live) return;
  const every = Number(live.dataset.interval) || 2000;
  const status = document.getElementById("refresh-status");
  const say = (text) => { if (status) status.textContent = text; };
  const tick = async () => {
    if (!document.hidden) {
      try {
        const res = await fetch(live.dataset.refresh, {
          credentials: "same-origin",
          cache: "no-store",
          // Not activity: the session still ends when the operator is idle.
          headers: { "x-tollgate-refresh": "1" },
          redirect: "follow",
        });
        if (res.redirected || res.status === 401 || res.status === 403) {
          // The session ended: the login page says so.
          window.location.assign("/ui/login");
          return;
        }
        if (res.ok) {
          // The console's own server-rendered (escaped) markup.
          live.innerHTML = await res.text();
          say("Updated " + new Date().toLocaleTimeString() + ".");
        } else {
          say("The last refresh failed (" + res.status + "); trying again.");
        }
      } catch (_) {
        say("The gateway did not answer; trying again.");
      }
    }
    window.setTimeout(tick, every);
  };
  window.setTimeout(tick, every);
});
