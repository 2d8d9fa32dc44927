// metaheal console: live re-rendering over server-sent events, and approval decisions signed in the browser.
// No framework and no build step. The operator's private key stays in this page: it is imported into
// WebCrypto as a non-extractable Ed25519 key and only signatures leave the browser.
"use strict";

(function () {
  const main = document.getElementById("main");
  const topics = new Set((document.body.dataset.topics || "").split(",").filter(Boolean));
  const live = document.getElementById("live");

  // --- live updates ------------------------------------------------------------------------------

  let inFlight = false;
  let again = false;

  async function refresh() {
    if (inFlight) { again = true; return; }
    inFlight = true;
    try {
      const r = await fetch(location.pathname + location.search, { headers: { "X-Fragment": "1" }, credentials: "same-origin" });
      if (r.ok) {
        const html = await r.text();
        const keep = saveInputs();
        main.innerHTML = html;
        restoreInputs(keep);
        const pending = r.headers.get("X-Pending");
        const badge = document.getElementById("pending-count");
        if (pending !== null && badge) { badge.textContent = pending; badge.classList.toggle("hot", pending !== "0"); }
        window.metahealRendered = { at: Date.now(), version: main.dataset.version };
        tick();
        document.dispatchEvent(new CustomEvent("metaheal:rendered"));
      }
    } finally {
      inFlight = false;
      if (again) { again = false; refresh(); }
    }
  }

  // reasons typed into approval cards survive a re-render
  function saveInputs() {
    const out = {};
    main.querySelectorAll("article.approval").forEach((a) => {
      const input = a.querySelector("input.reason");
      if (input && input.value) out[a.dataset.planId] = input.value;
    });
    return out;
  }
  function restoreInputs(saved) {
    Object.entries(saved).forEach(([plan, value]) => {
      const a = document.getElementById("approval-" + plan);
      const input = a && a.querySelector("input.reason");
      if (input) input.value = value;
    });
  }

  function connect() {
    const es = new EventSource("/events");
    es.addEventListener("hello", () => { live.textContent = "live"; live.className = "live on"; });
    es.addEventListener("change", (ev) => {
      const doc = JSON.parse(ev.data);
      window.metahealLastEvent = { received: Date.now(), sent: doc.sent * 1000, topics: doc.topics };
      if (doc.topics.some((t) => topics.has(t))) refresh();
      else if (doc.topics.includes("approvals")) refreshBadge();
    });
    es.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
  }

  async function refreshBadge() {
    const r = await fetch("/api/state", { credentials: "same-origin" });
    if (!r.ok) return;
    const s = await r.json();
    const badge = document.getElementById("pending-count");
    if (badge) { badge.textContent = s.pending_approvals.length; badge.classList.toggle("hot", s.pending_approvals.length > 0); }
  }

  // expiry countdowns
  function tick() {
    const now = Date.now() / 1000;
    document.querySelectorAll("[data-expires]").forEach((el) => {
      const left = Math.round(parseFloat(el.dataset.expires) - now);
      el.textContent = left > 0 ? `expires in ${Math.floor(left / 60)}m ${String(left % 60).padStart(2, "0")}s` : "expired";
      el.classList.toggle("late", left < 30);
    });
  }
  setInterval(tick, 1000);
  tick();
  connect();

  // --- signing -----------------------------------------------------------------------------------

  const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

  // RFC 8785 canonical JSON of a flat object of strings and finite numbers: members sorted by UTF-16
  // code units, values as JSON.stringify writes them (ECMAScript number form, JCS string escapes).
  // The same bytes as metaheal.ledger.canonical.canonical_json of the decision without its signature.
  function canonical(obj) {
    return "{" + Object.keys(obj).sort().map((k) => {
      const v = obj[k];
      if (typeof v === "number" && !Number.isFinite(v)) throw new Error(k + ": not a finite number");
      if (v !== null && typeof v === "object") throw new Error(k + ": nested values are not signed here");
      return JSON.stringify(k) + ":" + JSON.stringify(v);
    }).join(",") + "}";
  }
  window.metahealCanonical = canonical;

  const signer = document.getElementById("signer");
  if (!signer) return;
  const keyStatus = document.getElementById("key-status");
  const decisionStatus = document.getElementById("decision-status");
  const operatorSelect = document.getElementById("operator");
  const operators = JSON.parse(document.getElementById("operators").textContent);
  let key = null; // { privateKey: CryptoKey (non-extractable), keyId, publicHex }

  function say(el, text, cls) { el.textContent = text; el.className = "status " + (cls || ""); }

  if (!window.isSecureContext || !window.crypto || !crypto.subtle) {
    say(keyStatus, "WebCrypto is not available here: open the console as http://127.0.0.1:PORT (e.g. through an SSH tunnel) or over HTTPS to sign decisions.", "bad");
    document.getElementById("keyfile").disabled = true;
  }

  // PKCS#8 wrapping of a raw 32-byte Ed25519 seed (RFC 8410)
  const PKCS8_PREFIX = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

  async function loadKey(file) {
    const text = (await file.text()).trim();
    if (!/^[0-9a-fA-F]{64}$/.test(text)) throw new Error(`${file.name} is not an operator key file (64 hex digits of an Ed25519 seed)`);
    const pkcs8 = new Uint8Array(48);
    pkcs8.set(PKCS8_PREFIX);
    for (let i = 0; i < 32; i++) pkcs8[16 + i] = parseInt(text.substr(2 * i, 2), 16);
    try {
      // once extractable, only to learn the public key; then the key is imported again, non-extractable
      const probe = await crypto.subtle.importKey("pkcs8", pkcs8, { name: "Ed25519" }, true, ["sign"]);
      const jwk = await crypto.subtle.exportKey("jwk", probe);
      const pub = Uint8Array.from(atob(jwk.x.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));
      const privateKey = await crypto.subtle.importKey("pkcs8", pkcs8, { name: "Ed25519" }, false, ["sign"]);
      const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", pub));
      return { privateKey, publicHex: hex(pub), keyId: hex(digest).slice(0, 16) };
    } finally {
      pkcs8.fill(0);
    }
  }

  document.getElementById("keyfile").addEventListener("change", async (ev) => {
    const file = ev.target.files[0];
    ev.target.value = ""; // the file stays on disk; the page keeps only the CryptoKey
    if (!file) return;
    try {
      key = await loadKey(file);
    } catch (e) {
      key = null;
      say(keyStatus, "Key not loaded: " + e.message, "bad");
      return;
    }
    const op = operators.find((o) => o.public_key.toLowerCase() === key.publicHex);
    if (op) {
      operatorSelect.value = op.name;
      say(keyStatus, `Key ${key.keyId} loaded: registered to operator ${op.name}.`, "good");
    } else {
      say(keyStatus, `Key ${key.keyId} loaded, but it is not registered to any operator: the server will refuse what it signs.`, "warn");
    }
  });

  function decisionId() {
    const b = new Uint8Array(8);
    crypto.getRandomValues(b);
    return "dec-" + hex(b);
  }

  async function decide(article, decision) {
    if (!key) { say(decisionStatus, "Load your operator key file first.", "bad"); return; }
    const unsigned = {
      decision_id: decisionId(),
      request_id: article.dataset.requestId,
      plan_id: article.dataset.planId,
      operator: operatorSelect.value,
      decision: decision,
      reason: (article.querySelector("input.reason") || {}).value || "",
      decided_at: Date.now() / 1000,
      key_id: key.keyId,
      // the request's plan hash and nonce: the signature binds the decision to this very plan
      plan_hash: article.dataset.planHash || "",
      nonce: article.dataset.nonce || "",
    };
    const message = new TextEncoder().encode(canonical(unsigned));
    const sig = new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, key.privateKey, message));
    const body = { decision: { ...unsigned, signature: hex(sig) }, plan_digest: article.dataset.digest };
    say(decisionStatus, `Sending the signed ${decision} of ${unsigned.plan_id}…`, "");
    let r, doc;
    try {
      r = await fetch("/api/decisions", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      doc = await r.json();
    } catch (e) {
      say(decisionStatus, "Not sent: " + e.message, "bad");
      return;
    }
    say(decisionStatus, doc.message, doc.ok ? "good" : "bad");
    if (doc.ok) refresh();
  }

  main.addEventListener("click", (ev) => {
    const button = ev.target.closest("button[data-decision]");
    if (!button) return;
    const article = button.closest("article.approval");
    decide(article, button.dataset.decision).catch((e) => say(decisionStatus, "Not signed: " + e.message, "bad"));
  });
})();
