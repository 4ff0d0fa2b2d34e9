(function () {
  const tbody = document.querySelector("#pairs tbody");
  const rows = Array.from(tbody.rows);
  const text = new Map(rows.map((r) => [r, r.textContent.toLowerCase()]));
  const ctl = {score: document.getElementById("f-score"), kept: document.getElementById("f-kept"),
               q: document.getElementById("f-q")};
  const heads = Array.from(document.querySelectorAll("#pairs th"));
  let sort = null;  // {col, desc}

  function pick(select, value) {
    select.value = Array.from(select.options).some((o) => o.value === value) ? value : "all";
  }
  function readHash() {
    const h = new URLSearchParams(location.hash.slice(1));
    pick(ctl.score, h.get("score") || "all");
    pick(ctl.kept, h.get("kept") || "all");
    ctl.q.value = h.get("q") || "";
    const m = /^(\w+)-(asc|desc)$/.exec(h.get("sort") || "");
    const col = m ? heads.findIndex((th) => th.dataset.key === m[1]) : -1;
    sort = col >= 0 ? {col: col, desc: m[2] === "desc"} : null;
  }
  function writeHash() {
    const h = new URLSearchParams();
    if (ctl.score.value !== "all") h.set("score", ctl.score.value);
    if (ctl.kept.value !== "all") h.set("kept", ctl.kept.value);
    if (ctl.q.value) h.set("q", ctl.q.value);
    if (sort) h.set("sort", heads[sort.col].dataset.key + (sort.desc ? "-desc" : "-asc"));
    history.replaceState(null, "", h.toString() ? "#" + h.toString() : location.pathname + location.search);
  }
  function key(row, col) {
    const cell = row.cells[col];
    return cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim().toLowerCase();
  }
  function compare(a, b) {
    const col = sort.col, ka = key(a, col), kb = key(b, col);
    if (ka === "" || kb === "") return (ka === "") - (kb === "");  // no score: always last
    const numeric = heads[col].dataset.type === "num";
    const d = numeric ? Number(ka) - Number(kb) : ka.localeCompare(kb);
    return (sort.desc ? -d : d) || Number(a.dataset.i) - Number(b.dataset.i);
  }
  function apply() {
    const score = ctl.score.value, kept = ctl.kept.value, q = ctl.q.value.trim().toLowerCase();
    let shown = 0;
    for (const r of rows) {
      const ok = (score === "all" || r.dataset.bin === score) && (kept === "all" || r.dataset.kept === kept) &&
                 (!q || text.get(r).includes(q));
      r.hidden = !ok;
      shown += ok;
    }
    document.getElementById("shown").textContent = shown;
    const order = sort ? rows.slice().sort(compare) : rows;
    order.forEach((r) => tbody.appendChild(r));
    heads.forEach((th, i) => th.setAttribute("aria-sort", sort && sort.col === i ? (sort.desc ? "descending" : "ascending") : "none"));
  }
  heads.forEach((th, i) => th.addEventListener("click", () => {
    sort = sort && sort.col === i ? (sort.desc ? null : {col: i, desc: true}) : {col: i, desc: false};
    writeHash(); apply();
  }));
  for (const c of Object.values(ctl)) c.addEventListener("input", () => { writeHash(); apply(); });
  window.addEventListener("hashchange", () => { readHash(); apply(); });
  readHash(); apply();
})();
