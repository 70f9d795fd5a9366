// Small enhancements for the twinward portal: copying a newly created API token
// and asking for confirmation before forms marked with data-confirm are sent.
(() => {
  "use strict";

  function selectContents(element) {
    const selection = window.getSelection();
    if (!selection) {
      return;
    }
    const range = document.createRange();
    range.selectNodeContents(element);
    selection.removeAllRanges();
    selection.addRange(range);
  }

  function initCopy() {
    const button = document.getElementById("copy-token");
    const output = document.getElementById("new-token");
    if (!button || !output) {
      return;
    }
    const status = document.getElementById("copy-status");
    let clearTimer = 0;
    const say = (text) => {
      if (!status) {
        return;
      }
      window.clearTimeout(clearTimer);
      status.textContent = text;
      if (text) {
        clearTimer = window.setTimeout(() => {
          status.textContent = "";
        }, 8000);
      }
    };

    button.hidden = false;
    button.addEventListener("click", async () => {
      const text = output.textContent.trim();
      try {
        if (!navigator.clipboard || !navigator.clipboard.writeText) {
          throw new Error("clipboard unavailable");
        }
        await navigator.clipboard.writeText(text);
        say("Copied");
      } catch {
        selectContents(output);
        say("Could not copy automatically. The token is selected: press Ctrl+C (⌘C on a Mac) to copy it.");
      }
    });
  }

  function initConfirm() {
    document.addEventListener("submit", (event) => {
      const form = event.target;
      if (!(form instanceof HTMLFormElement)) {
        return;
      }
      const message = form.dataset.confirm;
      if (message && !window.confirm(message)) {
        event.preventDefault();
      }
    });
  }

  function init() {
    initCopy();
    initConfirm();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
