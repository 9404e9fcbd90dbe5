// hookline console: copy buttons and live refresh. Every page works without this script.
"use strict";

function enableCopyButtons(root) {
  root.querySelectorAll("button[data-copy]").forEach(function (button) {
    if (!navigator.clipboard) {
      return;
    }
    button.hidden = false;
    button.addEventListener("click", function () {
      var source = document.getElementById(button.getAttribute("data-copy"));
      if (!source) {
        return;
      }
      navigator.clipboard.writeText(source.textContent.trim()).then(function () {
        var label = button.textContent;
        button.textContent = "Copied";
        setTimeout(function () { button.textContent = label; }, 1500);
      });
    });
  });
}

// An element with data-live="<seconds>" is replaced every few seconds by the same element of a
// fresh copy of the page, so statuses move on their own while the page is open.
function enableLiveRefresh() {
  var live = document.querySelector("[data-live]");
  if (!live || !window.fetch || !window.DOMParser) {
    return;
  }
  var seconds = parseInt(live.getAttribute("data-live"), 10) || 3;
  var status = document.getElementById("live-status");
  if (status) {
    status.hidden = false;
  }
  setInterval(function () {
    if (document.hidden) {
      return;
    }
    fetch(window.location.href, { credentials: "same-origin", headers: { "x-live-refresh": "1" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (text) {
        if (!text) {
          return;
        }
        var fresh = new DOMParser().parseFromString(text, "text/html").querySelector("[data-live]");
        var current = document.querySelector("[data-live]");
        if (fresh && current && fresh.innerHTML !== current.innerHTML) {
          current.innerHTML = fresh.innerHTML;
          enableCopyButtons(current);
        }
      })
      .catch(function () {});
  }, seconds * 1000);
}

document.addEventListener("DOMContentLoaded", function () {
  enableCopyButtons(document);
  enableLiveRefresh();
});
