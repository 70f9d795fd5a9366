// Passkey (WebAuthn) ceremonies for the twinward sign-in, step-up and portal pages.
//
// The page provides <section id="passkey" data-mode="enroll|add|verify|stepup"
// data-return-to="..."> with a button (#passkey-go or #passkey-add), an optional
// #passkey-name input, a #passkey-status live region and a #passkey-error alert.
(() => {
  "use strict";

  const API = "/.twinward/api/webauthn/";
  const FALLBACK_URL = "/.twinward/";

  const MESSAGES = {
    unsupported: "This browser does not support passkeys.",
    cancelled: "The passkey prompt was cancelled or timed out. Try again.",
    duplicate: "This authenticator already holds a passkey for your account.",
    insecure:
      "Passkeys cannot be used on this address. Open twinward at its usual HTTPS address and try again.",
    notSupported:
      "This authenticator cannot do what twinward asks for. Try another passkey or browser.",
    constraint:
      "This authenticator cannot verify you (for example with a PIN or fingerprint), which twinward requires.",
    network: "Could not reach twinward. Check your connection and try again.",
    badResponse: "twinward sent an unexpected answer. Reload the page and try again.",
    generic: "Something went wrong with the passkey. Try again.",
    waiting: "Waiting for your passkey…",
    checking: "Checking…",
    done: "Done. Continuing…",
  };

  // An error whose message is already fit to show to the user.
  class GatewayError extends Error {
    constructor(message, stepUpUrl) {
      super(message);
      this.name = "GatewayError";
      this.stepUpUrl = stepUpUrl || null;
    }
  }

  // base64url (RFC 4648 §5, no padding) <-> ArrayBuffer ----------------------

  function fromB64url(value) {
    if (typeof value !== "string") {
      throw new GatewayError(MESSAGES.badResponse);
    }
    const b64 = value.replace(/-/g, "+").replace(/_/g, "/");
    const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
    let binary;
    try {
      binary = atob(padded);
    } catch {
      throw new GatewayError(MESSAGES.badResponse);
    }
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i += 1) {
      bytes[i] = binary.charCodeAt(i);
    }
    return bytes.buffer;
  }

  function toB64url(buffer) {
    const bytes = ArrayBuffer.isView(buffer)
      ? new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength)
      : new Uint8Array(buffer);
    let binary = "";
    const chunk = 0x8000;
    for (let i = 0; i < bytes.length; i += chunk) {
      binary += String.fromCharCode.apply(null, bytes.subarray(i, i + chunk));
    }
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  // Extension results may contain binary values; encode them like every other
  // binary field so they survive JSON.
  function jsonSafe(value) {
    if (value instanceof ArrayBuffer || ArrayBuffer.isView(value)) {
      return toB64url(value);
    }
    if (Array.isArray(value)) {
      return value.map(jsonSafe);
    }
    if (value !== null && typeof value === "object") {
      const out = {};
      for (const [key, inner] of Object.entries(value)) {
        out[key] = jsonSafe(inner);
      }
      return out;
    }
    return value;
  }

  function withBinaryIds(descriptors) {
    if (!Array.isArray(descriptors)) {
      return descriptors;
    }
    return descriptors.map((d) => ({ ...d, id: fromB64url(d.id) }));
  }

  function creationOptions(publicKey) {
    if (!publicKey || typeof publicKey !== "object" || !publicKey.user) {
      throw new GatewayError(MESSAGES.badResponse);
    }
    const options = {
      ...publicKey,
      challenge: fromB64url(publicKey.challenge),
      user: { ...publicKey.user, id: fromB64url(publicKey.user.id) },
    };
    if (publicKey.excludeCredentials !== undefined) {
      options.excludeCredentials = withBinaryIds(publicKey.excludeCredentials);
    }
    return options;
  }

  function requestOptions(publicKey) {
    if (!publicKey || typeof publicKey !== "object") {
      throw new GatewayError(MESSAGES.badResponse);
    }
    const options = { ...publicKey, challenge: fromB64url(publicKey.challenge) };
    if (publicKey.allowCredentials !== undefined) {
      options.allowCredentials = withBinaryIds(publicKey.allowCredentials);
    }
    const hmac = publicKey.extensions && publicKey.extensions.hmacGetSecret;
    if (hmac && typeof hmac === "object") {
      const converted = { output1: fromB64url(hmac.output1) };
      if (typeof hmac.output2 === "string") {
        converted.output2 = fromB64url(hmac.output2);
      }
      options.extensions = { ...publicKey.extensions, hmacGetSecret: converted };
    }
    return options;
  }

  function extensionResults(credential) {
    try {
      return jsonSafe(credential.getClientExtensionResults());
    } catch {
      return {};
    }
  }

  function encodeRegistration(credential) {
    const response = credential.response;
    let transports = [];
    try {
      transports = response.getTransports?.() ?? [];
    } catch {
      transports = [];
    }
    return {
      id: credential.id,
      rawId: toB64url(credential.rawId),
      type: credential.type,
      response: {
        attestationObject: toB64url(response.attestationObject),
        clientDataJSON: toB64url(response.clientDataJSON),
        transports,
      },
      extensions: extensionResults(credential),
    };
  }

  function encodeAssertion(credential) {
    const response = credential.response;
    return {
      id: credential.id,
      rawId: toB64url(credential.rawId),
      type: credential.type,
      response: {
        authenticatorData: toB64url(response.authenticatorData),
        clientDataJSON: toB64url(response.clientDataJSON),
        signature: toB64url(response.signature),
        userHandle: response.userHandle ? toB64url(response.userHandle) : null,
      },
      extensions: extensionResults(credential),
    };
  }

  // Network ------------------------------------------------------------------

  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") || "" : "";
  }

  // Only ever navigate within this origin.
  function sameOrigin(url) {
    if (typeof url !== "string" || url === "") {
      return null;
    }
    try {
      const resolved = new URL(url, window.location.href);
      return resolved.origin === window.location.origin ? resolved.href : null;
    } catch {
      return null;
    }
  }

  async function postJSON(path, body) {
    let response;
    try {
      response = await fetch(API + path, {
        method: "POST",
        credentials: "same-origin",
        cache: "no-store",
        headers: {
          "Content-Type": "application/json",
          Accept: "application/json, application/problem+json",
          "X-CSRF-Token": csrfToken(),
        },
        body: JSON.stringify(body),
      });
    } catch {
      throw new GatewayError(MESSAGES.network);
    }

    let data = null;
    const type = response.headers.get("Content-Type") || "";
    if (type.includes("json")) {
      try {
        data = await response.json();
      } catch {
        data = null;
      }
    }

    if (!response.ok) {
      const problem = data && typeof data === "object" ? data : {};
      const text =
        (typeof problem.detail === "string" && problem.detail) ||
        (typeof problem.title === "string" && problem.title) ||
        `twinward could not complete this step (HTTP ${response.status}). Try again.`;
      throw new GatewayError(text, sameOrigin(problem.step_up_url));
    }
    if (!data || typeof data !== "object") {
      throw new GatewayError(MESSAGES.badResponse);
    }
    return data;
  }

  // Ceremonies ---------------------------------------------------------------

  async function register(name, returnTo, say) {
    const start = await postJSON("register/start", { name, return_to: returnTo });
    const publicKey = creationOptions(start.options && start.options.publicKey);
    say(MESSAGES.waiting);
    let credential;
    try {
      credential = await navigator.credentials.create({ publicKey });
    } catch (err) {
      throw browserError(err, "create");
    }
    if (!credential) {
      throw new GatewayError(MESSAGES.cancelled);
    }
    say(MESSAGES.checking);
    return postJSON("register/finish", {
      ceremony: start.ceremony,
      credential: encodeRegistration(credential),
    });
  }

  async function authenticate(returnTo, say) {
    const start = await postJSON("authenticate/start", { return_to: returnTo });
    const publicKey = requestOptions(start.options && start.options.publicKey);
    say(MESSAGES.waiting);
    let credential;
    try {
      credential = await navigator.credentials.get({ publicKey });
    } catch (err) {
      throw browserError(err, "get");
    }
    if (!credential) {
      throw new GatewayError(MESSAGES.cancelled);
    }
    say(MESSAGES.checking);
    return postJSON("authenticate/finish", {
      ceremony: start.ceremony,
      credential: encodeAssertion(credential),
    });
  }

  function browserError(err, operation) {
    const name = err && err.name;
    switch (name) {
      case "NotAllowedError":
      case "AbortError":
        return new GatewayError(MESSAGES.cancelled);
      case "InvalidStateError":
        return new GatewayError(operation === "create" ? MESSAGES.duplicate : MESSAGES.generic);
      case "SecurityError":
        return new GatewayError(MESSAGES.insecure);
      case "NotSupportedError":
        return new GatewayError(MESSAGES.notSupported);
      case "ConstraintError":
        return new GatewayError(MESSAGES.constraint);
      default:
        return new GatewayError(MESSAGES.generic);
    }
  }

  // Page wiring --------------------------------------------------------------

  function init() {
    const section = document.getElementById("passkey");
    if (!section) {
      return;
    }
    const button = section.querySelector("#passkey-go, #passkey-add");
    const status = document.getElementById("passkey-status");
    const error = document.getElementById("passkey-error");
    const nameInput = document.getElementById("passkey-name");
    const mode = section.dataset.mode || "";
    const returnTo = section.dataset.returnTo || FALLBACK_URL;
    const registering = mode === "enroll" || mode === "add";
    const authenticating = mode === "verify" || mode === "stepup";
    if (!button || (!registering && !authenticating)) {
      return;
    }

    const say = (text) => {
      if (status) {
        status.textContent = text;
      }
    };
    const clearError = () => {
      if (error) {
        error.textContent = "";
        error.hidden = true;
      }
    };
    const showError = (text, focus) => {
      if (!error) {
        return;
      }
      error.textContent = text;
      error.hidden = false;
      if (focus) {
        if (!error.hasAttribute("tabindex")) {
          error.setAttribute("tabindex", "-1");
        }
        error.focus();
      }
    };
    const busy = (on) => {
      button.disabled = on;
      if (on) {
        section.setAttribute("aria-busy", "true");
      } else {
        section.removeAttribute("aria-busy");
      }
    };

    if (!window.PublicKeyCredential || !navigator.credentials) {
      button.disabled = true;
      showError(MESSAGES.unsupported, false);
      return;
    }

    let running = false;

    const run = async () => {
      if (running) {
        return;
      }
      running = true;
      busy(true);
      clearError();
      say(MESSAGES.waiting);
      try {
        const result = registering
          ? await register(nameInput ? nameInput.value.trim() : "", returnTo, say)
          : await authenticate(returnTo, say);
        say(MESSAGES.done);
        const target =
          sameOrigin(result.redirect) || sameOrigin(returnTo) || FALLBACK_URL;
        window.location.assign(target);
      } catch (err) {
        const message = err instanceof GatewayError ? err.message : MESSAGES.generic;
        say("");
        showError(message, true);
        if (err instanceof GatewayError && err.stepUpUrl) {
          window.location.assign(err.stepUpUrl);
          return;
        }
        busy(false);
        running = false;
      }
    };

    button.addEventListener("click", run);

    if (nameInput) {
      nameInput.addEventListener("keydown", (event) => {
        if (event.key === "Enter" && !event.isComposing) {
          event.preventDefault();
          run();
        }
      });
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
