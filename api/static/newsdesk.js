// Keyboard shortcuts for the server-rendered pages; everything works without this file.
// "/" focuses the search box (as on many sites), Escape leaves it (keeping its text), j/k move between results, changing the ranking
// mode re-runs the current search so the URL keeps describing what is on screen.
(function () {
  "use strict";
  const form = document.getElementById("search");
  const box = document.getElementById("q");
  const mode = document.getElementById("mode");
  if (!form || !box) return;

  function typing(el) {
    return el && (el.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(el.tagName));
  }

  function links() {
    return Array.from(document.querySelectorAll(".result h2 a"));
  }

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "Escape" && document.activeElement === box) {
      e.preventDefault(); // a search input clears itself on Escape; keep the query that the results are for
      box.blur();
      return;
    }
    if (typing(document.activeElement)) return;
    if (e.key === "/") {
      e.preventDefault();
      box.focus();
      box.select();
    } else if (e.key === "j" || e.key === "k") {
      const all = links();
      if (!all.length) return;
      const at = all.indexOf(document.activeElement);
      const next = e.key === "j" ? Math.min(at + 1, all.length - 1) : Math.max(at - 1, 0);
      all[next].focus();
      all[next].scrollIntoView({ block: "nearest" });
    }
  });

  if (mode) {
    mode.addEventListener("change", () => {
      if (box.value.trim()) form.requestSubmit();
    });
  }

  form.addEventListener("submit", (e) => {
    if (!box.value.trim()) {
      e.preventDefault();
      box.focus();
      return;
    }
    form.setAttribute("aria-busy", "true");
    const status = document.getElementById("status");
    if (status) status.textContent = "Searching…";
  });
})();
