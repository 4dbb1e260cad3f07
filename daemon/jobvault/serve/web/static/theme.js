// Runs before the page is drawn, so a chosen theme never flashes the other one first.
(function () {
  var theme = null;
  try { theme = localStorage.getItem("jobvault-theme"); } catch (e) { /* file:// or private mode */ }
  document.documentElement.dataset.theme = theme === "light" || theme === "dark" ? theme : "auto";
})();
