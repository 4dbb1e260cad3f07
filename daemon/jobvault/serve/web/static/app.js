// jobvault dashboard: charts (plotly.js), the theme toggle, live updates (server-sent events),
// replay paging, keyboard shortcuts. The pages work without it: every figure is in the HTML.
(function () {
  "use strict";
  var root = document.documentElement;
  var body = document.body;
  var live = body.dataset.live === "1";

  // -- theme ---------------------------------------------------------------------------------
  var THEMES = ["auto", "light", "dark"];
  function effectiveTheme() {
    var t = root.dataset.theme;
    if (t === "auto") {
      return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
    }
    return t;
  }
  function showTheme() {
    var button = document.getElementById("theme-toggle");
    if (button) {
      button.setAttribute("aria-label", "Theme: " + (root.dataset.theme === "auto" ? "automatic" : root.dataset.theme));
      button.textContent = root.dataset.theme === "auto" ? "◐" : root.dataset.theme === "dark" ? "☾" : "☀";
    }
  }
  function cycleTheme() {
    var next = THEMES[(THEMES.indexOf(root.dataset.theme) + 1) % THEMES.length];
    root.dataset.theme = next;
    try { localStorage.setItem("jobvault-theme", next); } catch (e) { /* not stored */ }
    showTheme();
    drawCharts();
  }
  showTheme();
  var toggle = document.getElementById("theme-toggle");
  if (toggle) toggle.addEventListener("click", cycleTheme);
  if (window.matchMedia) {
    var query = window.matchMedia("(prefers-color-scheme: dark)");
    if (query.addEventListener) query.addEventListener("change", function () { drawCharts(); });
  }

  // -- charts --------------------------------------------------------------------------------
  function css(name) { return getComputedStyle(root).getPropertyValue(name).trim(); }
  function merge(base, extra) {
    var out = {};
    Object.keys(base).forEach(function (k) { out[k] = base[k]; });
    Object.keys(extra || {}).forEach(function (k) {
      out[k] = (typeof extra[k] === "object" && extra[k] && !Array.isArray(extra[k]) && typeof out[k] === "object")
        ? merge(out[k], extra[k]) : extra[k];
    });
    return out;
  }
  function drawCharts() {
    var data = document.getElementById("charts-data");
    if (!data || typeof window.Plotly === "undefined") return;
    var specs = JSON.parse(data.textContent);
    var ink = css("--ink"), muted = css("--muted"), line = css("--line");
    var axis = { gridcolor: line, zerolinecolor: line, linecolor: line, tickfont: { color: muted }, automargin: true };
    var theme = {
      paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
      font: { family: "system-ui, sans-serif", size: 12, color: ink },
      margin: { l: 50, r: 50, t: 10, b: 40 }, height: 280,
      legend: { orientation: "h", y: -0.18, font: { color: muted } },
      hoverlabel: { bgcolor: css("--panel"), bordercolor: line, font: { color: ink } },
      xaxis: axis, yaxis: axis, yaxis2: merge(axis, { gridcolor: "rgba(0,0,0,0)" }),
    };
    specs.forEach(function (spec) {
      var el = document.querySelector('[data-chart="' + spec.id + '"]');
      if (!el) return;
      // plotly writes into the layout it is given (axis types, ranges): each chart gets its
      // own copy, never the shared theme objects.
      var layout = merge(JSON.parse(JSON.stringify(theme)), spec.layout);
      if (layout.yaxis2 && !spec.layout.yaxis2) delete layout.yaxis2;
      window.Plotly.react(el, spec.data, layout, { displayModeBar: false, responsive: true, displaylogo: false });
    });
  }
  window.addEventListener("load", drawCharts);

  // -- replay: paging, folding, live tail ----------------------------------------------------
  var replay = document.getElementById("replay");
  var replayUrl = body.dataset.replay;
  function events() { return replay ? replay.querySelectorAll("li.ev") : []; }
  function fetchEvents(offset, limit) {
    return fetch(replayUrl + "?offset=" + offset + "&limit=" + limit, { credentials: "same-origin" })
      .then(function (r) {
        if (!r.ok) throw new Error("replay: HTTP " + r.status);
        return r.text().then(function (html) {
          return { html: html, next: r.headers.get("X-Next-Offset"), total: r.headers.get("X-Total") };
        });
      });
  }
  function fragment(html) {
    var t = document.createElement("template");
    t.innerHTML = html;
    return t.content;
  }
  function updateMore(next, total) {
    replay.dataset.next = next || "";
    if (total) {
      replay.dataset.total = total;
      var count = document.getElementById("replay-count");
      if (count) count.textContent = Number(total).toLocaleString("en-US") + " events";
    }
    var button = document.getElementById("load-more");
    if (!button) return;
    if (!next) { button.parentNode.remove(); return; }
    button.textContent = "Show more (" + (Number(replay.dataset.total) - Number(next)).toLocaleString("en-US") + " left)";
  }
  var loading = false;
  function loadMore() {
    if (loading || !replay || !replay.dataset.next || !replayUrl) return;
    loading = true;
    fetchEvents(replay.dataset.next, 200).then(function (page) {
      replay.appendChild(fragment(page.html));
      updateMore(page.next, page.total);
    }).finally(function () { loading = false; });
  }
  var more = document.getElementById("load-more");
  if (more) {
    more.addEventListener("click", loadMore);
    if ("IntersectionObserver" in window) {
      new IntersectionObserver(function (entries) {
        if (entries.some(function (e) { return e.isIntersecting; })) loadMore();
      }, { rootMargin: "600px" }).observe(more);
    }
  }
  document.querySelectorAll("[data-toggle-all]").forEach(function (button) {
    button.addEventListener("click", function () {
      var open = button.dataset.toggleAll === "open";
      document.querySelectorAll("#replay details").forEach(function (d) { d.open = open; });
    });
  });
  // A live session: re-read the last events (a call's result folds into the call) and the rest.
  var TAIL = 20;
  function refreshTail() {
    if (!replay || replay.dataset.next) return Promise.resolve(); // still paging: the tail comes later
    var shown = events().length;
    var start = Math.max(0, shown - TAIL);
    return fetchEvents(start, 0).then(function (page) {
      events().forEach(function (el) { if (Number(el.dataset.seq) >= start) el.remove(); });
      replay.appendChild(fragment(page.html));
      updateMore(page.next, page.total);
    });
  }
  function refreshRecord() {
    var record = document.getElementById("record");
    if (!record) return Promise.resolve();
    return fetch(location.pathname + "?part=record", { credentials: "same-origin" }).then(function (r) {
      if (!r.ok) return;
      return r.text().then(function (html) {
        var opened = Array.prototype.map.call(record.querySelectorAll("details"), function (d) { return d.open; });
        var next = fragment(html).firstElementChild;
        if (!next) return;
        next.querySelectorAll("details").forEach(function (d, i) { if (opened[i] !== undefined) d.open = opened[i]; });
        record.replaceWith(next);
      });
    });
  }
  function refreshOverview() {
    return fetch(location.pathname + location.search, { credentials: "same-origin", headers: { "X-Jobvault-Part": "main" } })
      .then(function (r) {
        if (!r.ok) return;
        return r.text().then(function (html) {
          var main = document.getElementById("main");
          var focused = document.activeElement && document.activeElement.name;
          if (focused && main.contains(document.activeElement)) return; // never under the user's typing
          var opened = Array.prototype.map.call(main.querySelectorAll("details"), function (d) { return d.open; });
          main.innerHTML = html;
          main.querySelectorAll("details").forEach(function (d, i) { if (opened[i] !== undefined) d.open = opened[i]; });
          wireForms();
          drawCharts();
          body.dispatchEvent(new CustomEvent("jobvault:updated"));
        });
      });
  }

  // -- live updates --------------------------------------------------------------------------
  function debounce(fn, ms) {
    var timer = null, running = false, again = false;
    function run() {
      timer = null;
      if (running) { again = true; return; }
      running = true;
      Promise.resolve(fn()).catch(function () { /* the next event retries */ }).finally(function () {
        running = false;
        if (again) { again = false; schedule(); }
      });
    }
    function schedule() { if (!timer) timer = setTimeout(run, ms); }
    return schedule;
  }
  if (live && "EventSource" in window) {
    var state = document.getElementById("live-state");
    var jobId = body.dataset.job;
    var url = "/events" + (jobId ? "?job=" + encodeURIComponent(jobId) : "");
    var onJob = null;
    if (body.dataset.page === "job") {
      onJob = debounce(function () {
        return Promise.all([refreshRecord(), refreshTail()]).then(function () {
          body.dispatchEvent(new CustomEvent("jobvault:updated"));
        });
      }, 150);
    } else if (body.dataset.page === "overview") {
      onJob = debounce(refreshOverview, 700);
    }
    var source = new EventSource(url);
    source.addEventListener("open", function () { if (state) state.dataset.state = "open"; });
    source.addEventListener("error", function () { if (state) state.dataset.state = "closed"; });
    source.addEventListener("job", function () { if (onJob) onJob(); });
  }

  // -- forms, suggestions, keyboard ----------------------------------------------------------
  function wireForms() {
    document.querySelectorAll("[data-autosubmit]").forEach(function (el) {
      el.addEventListener("change", function () {
        if (el.value !== "custom") el.form.requestSubmit();
      });
    });
  }
  wireForms();
  if (live && document.getElementById("choices-project")) {
    fetch("/api/choices", { credentials: "same-origin" }).then(function (r) { return r.ok ? r.json() : {}; })
      .then(function (choices) {
        Object.keys(choices).forEach(function (key) {
          var list = document.getElementById("choices-" + key);
          if (!list) return;
          list.innerHTML = "";
          choices[key].forEach(function (value) {
            var option = document.createElement("option");
            option.value = value;
            list.appendChild(option);
          });
        });
      }).catch(function () { /* suggestions are optional */ });
  }
  // The static report: filter and sort its table without a server.
  document.querySelectorAll("[data-filter-table]").forEach(function (input) {
    var table = document.getElementById(input.dataset.filterTable);
    input.addEventListener("input", function () {
      var words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
      table.querySelectorAll("tbody tr").forEach(function (row) {
        var text = row.textContent.toLowerCase();
        row.hidden = !words.every(function (w) { return text.indexOf(w) >= 0; });
      });
    });
  });
  document.querySelectorAll("table.sortable [data-sort-col]").forEach(function (button) {
    button.addEventListener("click", function () {
      var th = button.closest("th");
      var table = th.closest("table");
      var index = Array.prototype.indexOf.call(th.parentNode.children, th);
      var descending = th.getAttribute("aria-sort") !== "descending";
      table.querySelectorAll("thead th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", descending ? "descending" : "ascending");
      var rows = Array.prototype.slice.call(table.querySelectorAll("tbody tr"));
      function key(row) {
        var cell = row.children[index];
        var value = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
        var number = Number(value);
        return value !== "" && !isNaN(number) ? number : value.toLowerCase();
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        return (x < y ? -1 : x > y ? 1 : 0) * (descending ? -1 : 1);
      });
      var tbody = table.querySelector("tbody");
      rows.forEach(function (row) { tbody.appendChild(row); });
    });
  });
  function typing(target) {
    return target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
  }
  function moveFocus(step) {
    var items = document.querySelectorAll("#replay li.ev, table.jobs tbody tr[data-href], tbody tr[data-href]");
    if (!items.length) return;
    var list = Array.prototype.filter.call(items, function (el) { return !el.hidden; });
    var current = list.indexOf(document.activeElement.closest ? document.activeElement.closest("li.ev, tr[data-href]") : null);
    var next = list[Math.max(0, Math.min(list.length - 1, current + step))];
    list.forEach(function (el) { el.classList.remove("focused"); });
    if (!next.hasAttribute("tabindex")) next.setAttribute("tabindex", "-1");
    next.classList.add("focused");
    next.focus();
    next.scrollIntoView({ block: "nearest" });
  }
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
    if (event.key === "/") {
      var search = document.getElementById("search");
      if (search) { event.preventDefault(); search.focus(); search.select(); }
    } else if (event.key === "t") {
      cycleTheme();
    } else if (event.key === "j" || event.key === "k") {
      event.preventDefault();
      moveFocus(event.key === "j" ? 1 : -1);
    } else if (event.key === "Enter") {
      var row = document.activeElement;
      if (row && row.dataset && row.dataset.href) { location.href = row.dataset.href; }
      else if (row && row.matches && row.matches("li.ev")) {
        var details = row.querySelector("details");
        if (details) details.open = !details.open;
      }
    }
  });
})();
