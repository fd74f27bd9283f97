// ketamine-cds card preview: progressive enhancement only. Without this script every part
// of the form is shown and the page works the same.
(function () {
  "use strict";
  var form = document.getElementById("send-form");
  if (!form) return;
  var sections = form.querySelectorAll("fieldset.source");

  function showSource() {
    var chosen = form.querySelector("input[name=source]:checked");
    var value = chosen ? chosen.value : "fixture";
    sections.forEach(function (s) { s.hidden = s.dataset.source !== value; });
  }

  function drugChanged() {
    var drug = form.querySelector("input[name=drug]:checked");
    var ketamine = !drug || drug.value === "ketamine";
    var route = document.getElementById("route");
    var minutes = document.getElementById("minutes");
    route.disabled = !ketamine;
    minutes.disabled = !ketamine || route.value !== "iv";
    var dose = document.getElementById("dose");
    if (!ketamine && (dose.value === "" || dose.value === "35")) dose.value = "56";
    if (ketamine && dose.value === "56") dose.value = "35";
  }

  var fixture = document.getElementById("fixture");
  var link = document.getElementById("fixture-link");
  var edit = document.getElementById("edit-fixture");
  function fixtureUrl() { return link.getAttribute("href").replace(/[^/]+\.json$/, encodeURIComponent(fixture.value) + ".json"); }
  fixture.addEventListener("change", function () { link.setAttribute("href", fixtureUrl()); });
  edit.hidden = false;
  edit.addEventListener("click", function () {
    fetch(fixtureUrl()).then(function (r) { return r.text(); }).then(function (text) {
      document.getElementById("request_text").value = text;
      form.querySelector("input[name=source][value=request]").checked = true;
      showSource();
      document.getElementById("request_text").focus();
    });
  });

  form.querySelectorAll("input[name=source]").forEach(function (r) { r.addEventListener("change", showSource); });
  form.querySelectorAll("input[name=drug]").forEach(function (r) { r.addEventListener("change", drugChanged); });
  document.getElementById("route").addEventListener("change", drugChanged);
  showSource();
  drugChanged();

  var results = document.getElementById("results");
  if (results && location.hash === "#results") results.focus({ preventScroll: true });
})();
