// voicedashd dashboard: log in, see your calls come and go live, follow a call's transcript.
//
// Tokens are kept in memory only (fields of the Session below), never in localStorage,
// sessionStorage or cookies. Refresh tokens rotate and a reused one revokes the whole session,
// so a copy in sessionStorage (which "duplicate tab" clones) would log both tabs out; and
// nothing is left behind for another tab or a later visitor of the same browser. The price:
// reloading the page asks for the password again.
//
// The hub (its URL is in <meta name="voicedash-hub">) gets the access token in the first
// message. The connection is re-opened with backoff when it drops, and immediately when the
// hub closes it because the token lapsed (4401); each followed call is resumed with since_seq
// and events are applied once per (call_id, seq).

import { Notifier } from "./notify.js";

const HUB_URL = document.querySelector('meta[name="voicedash-hub"]').content;
const REFRESH_RETRY_MS = 5_000;       // a refresh that failed for a network reason
const PING_EVERY_MS = 20_000;         // application pings find a dead connection...
const PONG_WITHIN_MS = 10_000;        // ...when no pong comes back in time
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 30_000;
const SHOW_RECONNECTING_AFTER_MS = 1_500;
const HISTORY_PAGE = 20;
const CLOSE_UNAUTHORIZED = 4401;

const WHO = { caller: "Caller", bot: "Bot" };
const END_REASONS = {
  caller_hangup: "the caller hung up",
  bot_hangup: "the bot hung up",
  cancelled: "the caller hung up before it was answered",
  ack_timeout: "the call could not be set up",
  media_timeout: "the audio stopped",
  shutdown: "the server was stopped",
  error: "an error",
  interrupted: "the server stopped unexpectedly",
  transferred: "it was put through to the extension",
};

const $ = (id) => document.getElementById(id);

/** Build an element; text is always set as text, never parsed as HTML. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function clock(ms) {
  const total = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(total / 3600);
  const m = String(Math.floor((total % 3600) / 60)).padStart(2, "0");
  const s = String(total % 60).padStart(2, "0");
  return h > 0 ? `${h}:${m}:${s}` : `${m}:${s}`;
}

function timeOfDay(iso) {
  return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function dateAndTime(iso) {
  const when = new Date(iso);
  const today = new Date().toDateString() === when.toDateString();
  const time = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return today ? `today ${time}`
    : `${when.toLocaleDateString([], { day: "numeric", month: "short" })} ${time}`;
}

function endReason(reason) {
  return END_REASONS[reason] || (reason ? reason.replaceAll("_", " ") : "unknown reason");
}

/** The page's one shape of a call, from the REST API or a hub event. */
function callFrom(source, callId) {
  const caller = source.caller;
  return {
    id: callId ?? source.call_id,
    number: typeof caller === "object" && caller !== null ? caller.number : caller,
    name: typeof caller === "object" && caller !== null ? caller.name : source.caller_name,
    extension: source.callee_extension,
    ai: Boolean(source.is_ai_handled),
    startedAt: source.started_at ?? source.answered_at ?? source.created_at,
    state: source.state ?? "confirmed",
    endedAt: source.ended_at ?? null,
    endReason: source.end_reason ?? null,
    duration: source.duration ?? null,
    summary: source.summary ?? null,
    recording: source.recording ?? null,
  };
}

const HANDLED_BY = {
  answered_from_knowledge: "The assistant answered from its knowledge.",
  message_taken: "The assistant took a message.",
};

function callerLabel(call) {
  return call.name || call.number || "Unknown caller";
}

/** What the Take this call status says while the PBX reports on the transfer. */
function transferProgressText(progress, extension) {
  if (progress.status === 180 || progress.status === 183) return `Ringing ${extension}…`;
  if (progress.status >= 200) return `The phone system accepted the transfer to ${extension}…`;
  return `The phone system is putting the call through to ${extension}…`;
}

// -- the session: tokens, refresh, authenticated requests -----------------------------------

class SessionEnded extends Error {}

class LoginFailed extends Error {
  constructor(kind, retryAfter = 0) {
    super(kind);
    this.kind = kind;
    this.retryAfter = retryAfter;
  }
}

class Session {
  #access = null;
  #refresh = null;
  #expiresAt = 0;       // performance.now() time; expires_in is relative, so clocks may differ
  #timer = null;
  #refreshing = null;

  constructor(onEnded) {
    this.onEnded = onEnded;
    this.user = null;
  }

  get active() {
    return this.#access !== null;
  }

  /** Log in; throws LoginFailed with kind credentials, throttled, invalid, network or server. */
  async login(extension, password, tenant) {
    const body = { extension, password };
    if (tenant) body.tenant = tenant;
    let answer;
    try {
      answer = await fetch("/api/auth/login", {
        method: "POST", cache: "no-store", headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
    } catch {
      throw new LoginFailed("network");
    }
    if (answer.ok) {
      this.#adopt(await answer.json());
      return this.user;
    }
    if (answer.status === 429) {
      const wait = Number.parseInt(answer.headers.get("Retry-After") || "", 10);
      throw new LoginFailed("throttled", Number.isFinite(wait) && wait > 0 ? wait : 1);
    }
    if (answer.status === 401) throw new LoginFailed("credentials");
    if (answer.status === 400) throw new LoginFailed("invalid");
    throw new LoginFailed("server");
  }

  #adopt(pair) {
    const ttl = pair.expires_in * 1000;
    this.#access = pair.access_token;
    this.#refresh = pair.refresh_token;
    this.#expiresAt = performance.now() + ttl;
    this.user = pair.user;
    // Refresh well before expiry: halfway, or a minute before for long-lived tokens.
    this.#schedule(Math.max(ttl / 2, ttl - 60_000));
  }

  #schedule(ms) {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.refresh().catch(() => {}), ms);
  }

  /** Exchange the refresh token for a new pair; concurrent callers share one request. */
  refresh() {
    if (this.#refreshing === null) {
      this.#refreshing = this.#doRefresh().finally(() => { this.#refreshing = null; });
    }
    return this.#refreshing;
  }

  async #doRefresh() {
    const token = this.#refresh;
    if (token === null) throw new SessionEnded();
    let answer;
    try {
      answer = await fetch("/api/auth/refresh", {
        method: "POST", cache: "no-store", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ refresh_token: token }),
      });
    } catch (error) {
      this.#schedule(REFRESH_RETRY_MS);
      throw error;
    }
    if (this.#refresh !== token) throw new SessionEnded();     // logged out meanwhile
    if (answer.ok) {
      this.#adopt(await answer.json());
      return;
    }
    if (answer.status === 401 || answer.status === 400) {
      this.#end(true);
      throw new SessionEnded();
    }
    this.#schedule(REFRESH_RETRY_MS);
    throw new Error(`token refresh failed with HTTP ${answer.status}`);
  }

  /** The access token, refreshed first if it has less than minValidMs left. */
  async token(minValidMs) {
    if (this.#access === null) throw new SessionEnded();
    if (this.#expiresAt - performance.now() < minValidMs) await this.refresh();
    return this.#access;
  }

  /** A request to the API with the bearer token; on 401, one refresh and one retry. */
  async fetch(path, init = {}) {
    for (let attempt = 0; ; attempt += 1) {
      const token = await this.token(1_000);
      const answer = await fetch(path, {
        ...init, cache: "no-store",
        headers: { ...(init.headers || {}), Authorization: `Bearer ${token}` },
      });
      if (answer.status !== 401) return answer;
      if (attempt > 0) {
        this.#end(true);
        throw new SessionEnded();
      }
      if (token === this.#access) await this.refresh();
    }
  }

  /** End the session on the server (best effort) and forget the tokens. */
  async logout() {
    const access = this.#access;
    const refresh = this.#refresh;
    this.#end(false);
    if (access === null) return;
    try {
      await fetch("/api/auth/logout", {
        method: "POST", cache: "no-store",
        headers: { Authorization: `Bearer ${access}`, "Content-Type": "application/json" },
        body: JSON.stringify({ refresh_token: refresh }),
      });
    } catch {
      // The tokens are forgotten here either way; the server lets them lapse.
    }
  }

  #end(expired) {
    const wasActive = this.#access !== null;
    clearTimeout(this.#timer);
    this.#access = null;
    this.#refresh = null;
    this.user = null;
    if (expired && wasActive) queueMicrotask(() => this.onEnded());
  }
}

// -- the hub: one WebSocket, lobby events, followed calls resumed without gaps ------------

class Hub {
  #ws = null;
  #stopped = true;
  #established = false;
  #closing = null;
  #attempt = 0;
  #nextId = 1;
  #pending = new Map();     // request id -> {callId, sub}
  #subs = new Map();        // call id -> {seen, last, waiting, handlers}
  #retryTimer = null;
  #pingTimer = null;
  #pongTimer = null;
  #statusTimer = null;
  #refreshFirst = false;

  constructor(url, session, hooks) {
    this.url = url;
    this.session = session;
    this.hooks = hooks;       // onLobby(event), onConnected(), onStatus(state, detail)
    window.addEventListener("online", () => this.#retryNow());
  }

  start() {
    this.#stopped = false;
    this.#attempt = 0;
    this.#connect();
  }

  stop() {
    this.#stopped = true;
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#statusTimer);
    this.#retryTimer = null;
    this.#statusTimer = null;
    this.#stopPing();
    this.#subs.clear();
    this.#pending.clear();
    const ws = this.#ws;
    this.#ws = null;
    this.#established = false;
    if (ws !== null) ws.close(1000, "logged out");
  }

  /** Follow a call: handlers.onCall(summary), onEvent(event) once per seq, onError(code, detail). */
  subscribe(callId, handlers) {
    const sub = { seen: new Set(), last: 0, waiting: null, handlers };
    this.#subs.set(callId, sub);
    if (this.#established) this.#sendSubscribe(callId, sub);
  }

  unsubscribe(callId) {
    if (!this.#subs.delete(callId)) return;
    if (this.#established) this.#send({ type: "unsubscribe_call", id: this.#id(), call_id: callId });
  }

  #connect() {
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch {
      this.#scheduleRetry(false, null);
      return;
    }
    this.#ws = ws;
    this.#established = false;
    this.#closing = null;
    ws.onopen = () => this.#authenticate(ws);
    ws.onmessage = (message) => { if (ws === this.#ws) this.#receive(message.data); };
    ws.onclose = (event) => { if (ws === this.#ws) this.#closed(event.code); };
  }

  async #authenticate(ws) {
    let token;
    try {
      if (this.#refreshFirst) await this.session.refresh();
      token = await this.session.token(2_000);
    } catch {
      // No token (the session ended: the page goes back to the login form) or no network.
      if (ws === this.#ws) ws.close();
      return;
    }
    this.#refreshFirst = false;
    if (ws === this.#ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: "auth", token }));
    }
  }

  #receive(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    switch (message.type) {
      case "connection_established":
        this.#established = true;
        this.#attempt = 0;
        clearTimeout(this.#statusTimer);
        this.#statusTimer = null;
        this.hooks.onStatus("live");
        for (const [callId, sub] of this.#subs) this.#sendSubscribe(callId, sub);
        this.#startPing();
        this.hooks.onConnected();
        break;
      case "event":
        if (["call_started", "call_ended", "call_summary"].includes(message.event)) {
          this.hooks.onLobby(message);
        }
        this.#deliver(message);
        break;
      case "reply":
        this.#reply(message);
        break;
      case "pong":
        clearTimeout(this.#pongTimer);
        break;
      case "closing":
        this.#closing = message;
        break;
      default:
        break;
    }
  }

  #sendSubscribe(callId, sub) {
    const id = this.#id();
    sub.waiting = [];
    this.#pending.set(id, { callId, sub });
    this.#send({ type: "subscribe_call", id, call_id: callId, since_seq: sub.last });
  }

  #reply(message) {
    const request = this.#pending.get(message.id);
    if (request === undefined) return;
    this.#pending.delete(message.id);
    const { callId, sub } = request;
    if (this.#subs.get(callId) !== sub) return;             // unsubscribed meanwhile
    const held = sub.waiting || [];
    sub.waiting = null;
    if (!message.success) {
      this.#subs.delete(callId);
      sub.handlers.onError(message.error, message.detail);
      return;
    }
    sub.handlers.onCall(message.call);
    const events = [...message.events, ...held].sort((a, b) => a.seq - b.seq);
    for (const event of events) this.#apply(sub, event);
  }

  #deliver(event) {
    const sub = this.#subs.get(event.call_id);
    if (sub === undefined) return;
    if (sub.waiting !== null) {             // its subscribe reply (with the backlog) comes first
      sub.waiting.push(event);
      return;
    }
    if (event.seq > sub.last + 1 && !sub.seen.has(event.seq)) {
      this.#sendSubscribe(event.call_id, sub);     // a gap: fetch what is missing, then this
      sub.waiting.push(event);
      return;
    }
    this.#apply(sub, event);
  }

  #apply(sub, event) {
    if (sub.seen.has(event.seq)) return;
    sub.seen.add(event.seq);
    sub.last = Math.max(sub.last, event.seq);
    sub.handlers.onEvent(event);
  }

  #closed(code) {
    const closing = this.#closing;
    const wasUp = this.#established;
    this.#ws = null;
    this.#established = false;
    this.#stopPing();
    this.#pending.clear();
    for (const sub of this.#subs.values()) sub.waiting = null;    // resent from sub.last
    if (this.#stopped) return;
    const finalCode = closing ? closing.code : code;
    if (finalCode === CLOSE_UNAUTHORIZED && !wasUp) this.#refreshFirst = true;
    this.#scheduleRetry(wasUp, finalCode);
  }

  #scheduleRetry(wasUp, code) {
    let delay;
    if (wasUp) {
      // A working connection ended: its token lapsed (reconnect at once with the new one) or
      // the server went away or dropped us (try again soon).
      this.#attempt = 0;
      delay = code === CLOSE_UNAUTHORIZED ? 0 : BACKOFF_FIRST_MS * (0.5 + Math.random() / 2);
    } else {
      const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.#attempt);
      delay = base * (0.5 + Math.random() / 2);
      this.#attempt += 1;
    }
    if (this.#statusTimer === null) {
      this.#statusTimer = setTimeout(() => {
        this.#statusTimer = null;
        if (!this.#established && !this.#stopped) this.hooks.onStatus("reconnecting");
      }, SHOW_RECONNECTING_AFTER_MS);
    }
    this.#retryTimer = setTimeout(() => this.#connect(), delay);
  }

  #retryNow() {
    if (this.#stopped || this.#retryTimer === null) return;
    this.#attempt = 0;
    this.#connect();
  }

  #startPing() {
    this.#stopPing();
    this.#pingTimer = setInterval(() => {
      this.#send({ type: "ping", id: this.#id() });
      clearTimeout(this.#pongTimer);
      this.#pongTimer = setTimeout(() => this.#dead(), PONG_WITHIN_MS);
    }, PING_EVERY_MS);
  }

  #stopPing() {
    clearInterval(this.#pingTimer);
    clearTimeout(this.#pongTimer);
    this.#pingTimer = null;
  }

  /** No pong: the connection is gone even if the browser has not noticed; start over. */
  #dead() {
    const ws = this.#ws;
    if (ws === null) return;
    this.#closed(1006);
    ws.close();
  }

  #send(message) {
    if (this.#ws !== null && this.#ws.readyState === WebSocket.OPEN) {
      this.#ws.send(JSON.stringify(message));
    }
  }

  #id() {
    const id = this.#nextId;
    this.#nextId += 1;
    return id;
  }
}

// -- a finished call's recording (recording tenants only) ----------------------------------

/**
 * The audio player of a finished, recorded call. `<audio src>` cannot send the bearer token,
 * so the file is fetched with the session's token into a Blob and played from an object URL
 * (the page's CSP allows blob: media); no token ever goes into a URL.
 */
class RecordingPlayer {
  #session;
  #callId = null;
  #url = null;
  #load = 0;

  constructor(session) {
    this.#session = session;
    this.section = $("call-recording");
    this.audio = $("recording-audio");
    this.status = $("recording-status");
  }

  /** Show the call's recording ({url, duration, bytes}), or nothing when it has none. */
  async show(callId, recording) {
    if (!recording) {
      this.hide();
      return;
    }
    if (this.#callId === callId) return;
    this.hide();
    this.#callId = callId;
    const load = this.#load;
    this.section.hidden = false;
    this.#say(`Loading the recording (${clock(recording.duration * 1000)})…`);
    let blob;
    try {
      const answer = await this.#session.fetch(recording.url);
      if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
      blob = await answer.blob();
    } catch (error) {
      if (load === this.#load && !(error instanceof SessionEnded)) {
        this.#say("The recording could not be loaded.", "failed");
      }
      return;
    }
    if (load !== this.#load) return;   // another call was opened meanwhile
    this.#url = URL.createObjectURL(blob);
    this.audio.src = this.#url;
    this.#say("");
  }

  /** Stop, and let the audio go. */
  hide() {
    this.#load += 1;
    this.#callId = null;
    this.audio.pause();
    this.audio.removeAttribute("src");
    this.audio.load();
    if (this.#url !== null) URL.revokeObjectURL(this.#url);
    this.#url = null;
    this.section.hidden = true;
    this.#say("");
  }

  #say(text, kind = "") {
    this.status.textContent = text;
    this.status.className = `recording-status ${kind}`;
  }
}

// -- one call's conversation ----------------------------------------------------------------

class Transcript {
  constructor(list, interim, empty) {
    this.list = list;
    this.interimEl = interim;
    this.empty = empty;
    this.interims = new Map();      // speaker -> text not yet final
    this.speaking = null;
  }

  reset() {
    this.list.replaceChildren();
    this.interims.clear();
    this.speaking = null;
    this.#renderInterim();
    this.empty.hidden = false;
  }

  /** A final line replaces that speaker's interim text. */
  final(speaker, text, seq) {
    this.interims.delete(speaker);
    this.#renderInterim();
    return this.#add(speaker, text, seq);
  }

  interim(speaker, text) {
    if (text) this.interims.set(speaker, text);
    else this.interims.delete(speaker);
    this.#renderInterim();
  }

  botStarted(text, seq) {
    this.botCompleted();
    const line = this.final("bot", text, seq);
    line.classList.add("speaking");
    line.querySelector(".who").append(el("span", { class: "badge speaking-badge", text: "speaking" }));
    this.speaking = line;
  }

  botCompleted() {
    if (this.speaking === null) return;
    this.speaking.classList.remove("speaking");
    this.speaking.querySelector(".speaking-badge")?.remove();
    this.speaking = null;
  }

  system(text, seq) {
    return this.#add("system", text, seq);
  }

  #add(kind, text, seq) {
    const atBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 80;
    const line = el("li", { class: `line ${kind}`, "data-seq": seq, "data-speaker": kind },
      kind === "system" ? null : el("span", { class: "who", text: WHO[kind] || kind }),
      el("p", { class: "text", text }));
    this.list.append(line);
    this.empty.hidden = true;
    if (atBottom) (this.interimEl.hidden ? line : this.interimEl).scrollIntoView({ block: "nearest" });
    return line;
  }

  #renderInterim() {
    const parts = [...this.interims].map(([speaker, text]) => `${WHO[speaker] || speaker}: ${text}…`);
    this.interimEl.textContent = parts.join("\n");
    this.interimEl.hidden = parts.length === 0;
    this.interimEl.className = `interim ${parts.length === 1 ? [...this.interims.keys()][0] : ""}`;
    if (parts.length) this.empty.hidden = true;
  }
}

// -- unread and handled: the user's own state of each call, counts, filter -----------------

const INBOX_CHANNEL = "voicedashd-inbox";     // other tabs of this browser learn of a change
const INBOX_REFRESH_MS = 250;                 // lobby bursts: one counts request
const INBOX_EMPTY = {
  "": "No calls yet.", new: "No new calls.", open: "No open calls.", handled: "No handled calls.",
};

/** Per-user call states (new, open, handled) from the API; counts, the history filter, and
 * the Mark handled / Reopen buttons of the open call. Other tabs of the same user learn of a
 * change from a BroadcastChannel message; other browsers when the page gets the focus. */
class Inbox {
  constructor(session, hooks) {
    this.session = session;
    this.hooks = hooks;             // onChange(): re-render lists and title; onStale(): reload
    this.states = new Map();        // call id -> "new" | "open" | "handled"
    this.counts = { new: 0, open: 0, handled: 0 };
    this.filter = "";               // "" (all), "new", "open" or "handled"
    this.shown = null;              // the id of the call in the call view
    this.loads = 0;
    this.timer = null;
    this.channel = typeof BroadcastChannel === "function" ? new BroadcastChannel(INBOX_CHANNEL) : null;
    this.channel?.addEventListener("message", (event) => this.#fromOtherTab(event.data));
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") this.#recheck();
    });
    window.addEventListener("focus", () => this.#recheck());
    $("inbox-filter").addEventListener("click", (event) => {
      const button = event.target.closest("button[data-filter]");
      if (button) this.#setFilter(button.dataset.filter);
    });
    $("call-handled").addEventListener("click", () => this.#mark(this.shown, "handled", "POST"));
    $("call-reopen").addEventListener("click", () => this.#mark(this.shown, "handled", "DELETE"));
  }

  /** Calls not opened yet: the server's count, or more if the lobby has told of newer ones. */
  get unread() {
    let known = 0;
    for (const state of this.states.values()) if (state === "new") known += 1;
    return Math.max(this.counts.new, known);
  }

  stateOf(id) {
    return this.states.get(id) ?? "new";
  }

  /** The list badge of a call not opened yet, or of one marked handled. */
  badge(id) {
    const state = this.stateOf(id);
    return state === "new" ? el("span", { class: "badge new", text: "New" })
      : state === "handled" ? el("span", { class: "badge handled", text: "Handled" }) : null;
  }

  start() {
    this.#setFilter("", false);
    this.refresh();
  }

  stop() {
    clearTimeout(this.timer);
    this.loads += 1;
    this.states.clear();
    this.counts = { new: 0, open: 0, handled: 0 };
    this.shown = null;
    this.#renderCounts();
  }

  /** Take the inbox field of calls from the API. */
  learn(items) {
    let changed = false;
    for (const item of items) {
      if (item.inbox && this.states.get(item.call_id) !== item.inbox) {
        this.states.set(item.call_id, item.inbox);
        changed = true;
      }
    }
    if (changed) this.#renderCounts();
  }

  /** A call_started from the lobby: a call never seen is new. */
  arrived(id) {
    if (!this.states.has(id)) {
      this.states.set(id, "new");
      this.counts.new += 1;
      this.#renderCounts();
    }
    this.#refreshSoon();
  }

  /** The call view shows id (null: closed); opening a new call marks it opened. */
  show(id) {
    this.shown = id;
    $("inbox-actions").hidden = id === null;
    $("inbox-status").textContent = "";
    if (id === null) return;
    this.#renderActions();
    if (this.stateOf(id) === "new") this.#mark(id, "opened", "POST");
  }

  /** Fetch the counts; an answer older than a later change is dropped. */
  async refresh() {
    const load = ++this.loads;
    let counts;
    try {
      const answer = await this.session.fetch("/api/calls/counts");
      if (!answer.ok) return;
      counts = await answer.json();
    } catch {
      return;       // no network or the session ended: the next event or focus asks again
    }
    if (load !== this.loads || !this.session.active) return;
    const changed = ["new", "open", "handled"].some((key) => counts[key] !== this.counts[key]);
    this.counts = counts;
    this.#renderCounts();
    return changed;
  }

  #refreshSoon() {
    this.loads += 1;      // what is in flight predates this change
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh(), INBOX_REFRESH_MS);
  }

  async #recheck() {
    if (!this.session.active) return;
    if (await this.refresh()) this.hooks.onStale();
  }

  async #mark(id, what, method) {
    if (id === null) return;
    const before = this.stateOf(id);
    const guess = what === "opened" ? (before === "new" ? "open" : before)
      : method === "POST" ? "handled" : "open";
    this.#apply(id, guess);
    let body;
    try {
      const answer = await this.session.fetch(`/api/calls/${encodeURIComponent(id)}/${what}`,
        { method });
      if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
      body = await answer.json();
    } catch (error) {
      this.#apply(id, before);
      if (!(error instanceof SessionEnded) && this.shown === id) {
        $("inbox-status").textContent = "The change could not be saved. Try again.";
      }
      return;
    }
    this.#apply(body.call_id, body.inbox);
    if (this.shown === id && what === "handled") {
      $("inbox-status").textContent = body.inbox === "handled" ? "Marked handled." : "Reopened.";
    }
    this.channel?.postMessage({ user: this.#who(), call_id: body.call_id, inbox: body.inbox });
    this.#refreshSoon();
  }

  /** Set a call's state here, moving it between the counts until the server's come. */
  #apply(id, state) {
    const before = this.stateOf(id);
    this.states.set(id, state);
    if (before !== state) {
      this.counts[before] = Math.max(0, this.counts[before] - 1);
      this.counts[state] += 1;
    }
    this.#renderCounts();
    if (this.shown === id) this.#renderActions();
  }

  #fromOtherTab(message) {
    if (!this.session.active || message?.user !== this.#who()) return;
    this.#apply(message.call_id, message.inbox);
    this.#refreshSoon();
  }

  #who() {
    const user = this.session.user;
    return user ? `${user.tenant}/${user.extension}` : null;
  }

  #setFilter(filter, reload = true) {
    this.filter = filter;
    for (const button of $("inbox-filter").querySelectorAll("button[data-filter]")) {
      button.setAttribute("aria-pressed", String(button.dataset.filter === filter));
    }
    $("history-empty").textContent = INBOX_EMPTY[filter];
    if (reload) this.hooks.onFilter();
  }

  #renderCounts() {
    $("inbox-new").textContent = String(this.unread);
    $("inbox-open").textContent = String(this.counts.open);
    this.hooks.onChange();
  }

  #renderActions() {
    const handled = this.stateOf(this.shown) === "handled";
    const hiding = $(handled ? "call-handled" : "call-reopen");
    const had = document.activeElement === hiding;
    hiding.hidden = true;
    $(handled ? "call-reopen" : "call-handled").hidden = false;
    // The pressed button gives way to the other: the focus follows rather than drop to body.
    if (had) $(handled ? "call-reopen" : "call-handled").focus();
  }
}

// -- the page -------------------------------------------------------------------------------

class Dashboard {
  constructor() {
    this.session = new Session(() => this.#signedOut("Your session has ended. Please log in again."));
    this.hub = new Hub(HUB_URL, this.session, {
      onLobby: (event) => {
        this.#lobby(event);
        const known = this.#knownCall(event.call_id);
        this.notifier.lobby(event, known ? callerLabel(known) : null);
      },
      onConnected: () => this.#loadActive(),
      onStatus: (state) => this.#hubStatus(state),
    });
    this.transcript = new Transcript($("transcript"), $("interim"), $("transcript-empty"));
    this.notifier = new Notifier({ toggle: $("notify-toggle"), state: $("notify-state"),
      sound: $("notify-sound"), soundBox: $("notify-sound-box") },
    (id) => this.#openNotified(id), (id) => this.view?.id === id);
    this.player = new RecordingPlayer(this.session);
    this.active = new Map();        // call id -> call
    this.addedAt = new Map();       // call id -> when a call_started added it (performance.now)
    this.ended = new Set();         // ids of calls seen ending, so a stale list cannot revive them
    this.history = [];
    this.nextBefore = null;
    this.view = null;               // the open call: {id, call, live, ended}
    this.activeLoads = 0;
    this.historyTimer = null;
    this.ticker = null;
    this.countdown = null;
    this.inbox = new Inbox(this.session, {
      onChange: () => { this.#renderActive(); this.#renderHistory(); },
      onFilter: () => this.#loadHistory(false),
      onStale: () => { this.#loadActive(); this.#loadHistory(false); },
    });

    $("login-form").addEventListener("submit", (event) => this.#login(event));
    $("logout").addEventListener("click", () => this.#logout());
    $("call-close").addEventListener("click", () => this.#closeCall(true));
    $("history-more").addEventListener("click", () => this.#loadHistory(true));
    $("call-take").addEventListener("click", () => this.#takeCall());
    $("call-view").addEventListener("keydown", (event) => {
      if (event.key === "Escape") this.#closeCall(true);
    });
    for (const list of [$("active-list"), $("history-list")]) {
      list.addEventListener("click", (event) => {
        const button = event.target.closest("button[data-call-id]");
        if (button) this.#openCall(button.dataset.callId);
      });
    }
    $("extension").focus();
  }

  // -- logging in and out --

  async #login(event) {
    event.preventDefault();
    this.#clearLoginMessages();
    const extension = $("extension").value.trim();
    const password = $("password").value;
    const tenant = $("tenant").value.trim();
    if (!extension || !password) {
      this.#loginError("Enter your extension and your password.");
      $(extension ? "password" : "extension").focus();
      return;
    }
    const submit = $("login-submit");
    submit.disabled = true;
    submit.textContent = "Logging in…";
    try {
      await this.session.login(extension, password, tenant || null);
    } catch (error) {
      this.#loginFailed(error);
      return;
    } finally {
      submit.disabled = false;
      submit.textContent = "Log in";
    }
    $("password").value = "";
    this.#enter();
  }

  #loginFailed(error) {
    const kind = error instanceof LoginFailed ? error.kind : "server";
    if (kind === "throttled") {
      let left = error.retryAfter;
      const show = () => {
        this.#loginError(left > 0 ? `Too many failed attempts. Try again in ${left} s.`
          : "Too many failed attempts. You can try again now.");
      };
      show();
      this.countdown = setInterval(() => {
        left -= 1;
        show();
        if (left <= 0) clearInterval(this.countdown);
      }, 1000);
    } else if (kind === "credentials") {
      this.#loginError("Wrong extension or password. If your extension is used in more than "
        + "one organisation, fill in the organisation too.");
    } else if (kind === "invalid") {
      this.#loginError("Check what you typed: the extension, password or organisation is not valid.");
    } else if (kind === "network") {
      this.#loginError("Cannot reach the server. Check your connection and try again.");
    } else {
      this.#loginError("The server could not log you in. Try again in a moment.");
    }
    $("password").select();
    $("password").focus();
  }

  #loginError(text) {
    const box = $("login-error");
    box.textContent = text;
    box.hidden = false;
  }

  #clearLoginMessages() {
    clearInterval(this.countdown);
    $("login-error").hidden = true;
    $("login-message").hidden = true;
  }

  #enter() {
    const user = this.session.user;
    $("who").textContent = `Extension ${user.extension} · ${user.tenant}`
      + (user.role === "admin" ? " · admin (all calls)" : "");
    $("login-view").hidden = true;
    $("session-bar").hidden = false;
    $("app-view").hidden = false;
    this.#hubStatus("connecting");
    this.hub.start();
    this.inbox.start();
    this.#loadActive();
    this.#loadHistory(false);
    this.ticker = setInterval(() => this.#tick(), 1000);
    $("active-title").focus();
  }

  async #logout() {
    this.hub.stop();
    await this.session.logout();
    this.#signedOut("You have logged out.");
  }

  #signedOut(message) {
    this.hub.stop();
    this.notifier.reset();
    clearInterval(this.ticker);
    clearTimeout(this.historyTimer);
    this.active.clear();
    this.addedAt.clear();
    this.ended.clear();
    this.history = [];
    this.view = null;
    this.inbox.stop();
    this.transcript.reset();
    this.player.hide();
    $("active-list").replaceChildren();
    $("history-list").replaceChildren();
    $("call-view").hidden = true;
    $("app-view").classList.remove("call-open");
    $("app-view").hidden = true;
    $("session-bar").hidden = true;
    $("login-view").hidden = false;
    this.#title();
    this.#clearLoginMessages();
    $("login-message").textContent = message;
    $("login-message").hidden = false;
    $("password").value = "";
    $("extension").focus();
  }

  // -- the hub's state --

  #hubStatus(state) {
    const status = $("hub-status");
    status.dataset.state = state;
    status.textContent = state === "live" ? "Live"
      : state === "connecting" ? "Connecting…" : "Reconnecting…";
  }

  // -- active calls --

  async #loadActive() {
    const load = ++this.activeLoads;
    const asked = performance.now();
    let calls;
    try {
      const answer = await this.session.fetch("/api/calls/active");
      if (!answer.ok) return;
      calls = await answer.json();
    } catch {
      return;       // no network (the hub's reconnect reloads), or the session ended
    }
    if (load !== this.activeLoads || !this.session.active) return;
    this.inbox.learn(calls);
    const fresh = new Map();
    for (const item of calls) {
      if (!this.ended.has(item.call_id)) fresh.set(item.call_id, callFrom(item));
    }
    // Calls announced by the hub after this list was asked for are kept.
    for (const [id, call] of this.active) {
      if (!fresh.has(id) && (this.addedAt.get(id) ?? -1) > asked) fresh.set(id, call);
    }
    this.active = fresh;
    this.#renderActive();
  }

  #lobby(event) {
    const id = event.call_id;
    if (event.event === "call_started") {
      if (this.ended.has(id)) return;
      const known = this.active.has(id);
      const call = callFrom(event.data, id);
      this.active.set(id, call);
      this.addedAt.set(id, performance.now());
      this.inbox.arrived(id);
      this.#renderActive();
      if (!known) this.#announce(`New call from ${callerLabel(call)}.`);
    } else if (event.event === "call_ended") {
      this.ended.add(id);
      const call = this.active.get(id);
      if (call !== undefined) {
        this.active.delete(id);
        this.addedAt.delete(id);
        this.#renderActive();
        this.#announce(`The call from ${callerLabel(call)} ended.`);
      }
      clearTimeout(this.historyTimer);
      this.historyTimer = setTimeout(() => this.#loadHistory(false), 300);
    } else if (event.event === "call_summary") {
      const summary = event.data || {};
      const past = this.history.find((call) => call.id === id);
      if (past !== undefined) {
        past.summary = summary;
        this.#renderHistory();
      }
      if (this.view?.id === id) {
        this.view.call = { ...this.view.call, summary };
        this.#renderCard();
      }
    }
  }

  #renderActive() {
    const list = $("active-list");
    const calls = [...this.active.values()].sort((a, b) => Date.parse(a.startedAt) - Date.parse(b.startedAt));
    const focused = document.activeElement?.closest?.("#active-list li")?.dataset.callId;
    list.replaceChildren(...calls.map((call) => this.#activeItem(call)));
    $("active-empty").hidden = calls.length > 0;
    $("active-count").textContent = calls.length ? `(${calls.length})` : "";
    this.#title();
    if (focused) {
      const again = list.querySelector(`li[data-call-id="${CSS.escape(focused)}"] button`);
      (again || $("active-title")).focus();
    }
  }

  /** The tab's title carries the unread count, so a background tab shows it. */
  #title() {
    const unread = this.inbox.unread;
    document.title = unread ? `(${unread}) Calls — voicedashd` : "Calls — voicedashd";
  }

  #activeItem(call) {
    const elapsed = el("time", {
      class: "elapsed", datetime: call.startedAt, "data-since": call.startedAt,
      text: clock(Date.now() - Date.parse(call.startedAt)),
    });
    const badges = el("span", { class: "badges" },
      call.state !== "confirmed" ? el("span", { class: "badge ringing", text: call.state }) : null,
      call.ai ? el("span", { class: "badge ai", text: "AI-handled" }) : null,
      this.inbox.badge(call.id));
    const button = el("button", {
      type: "button", class: "call-item", "data-call-id": call.id,
      "data-inbox": this.inbox.stateOf(call.id),
      "aria-current": this.view?.id === call.id ? "true" : null,
    },
    el("span", { class: "caller" }, callerLabel(call),
      call.name ? el("span", { class: "number", text: ` ${call.number}` }) : null),
    el("span", { class: "when" }, elapsed),
    el("span", { class: "detail", text: `To ${call.extension} · since ${timeOfDay(call.startedAt)}` }),
    badges);
    return el("li", { "data-call-id": call.id }, button);
  }

  #tick() {
    const now = Date.now();
    for (const time of document.querySelectorAll("time.elapsed[data-since]")) {
      time.textContent = clock(now - Date.parse(time.dataset.since));
    }
  }

  // -- history --

  async #loadHistory(more) {
    const params = new URLSearchParams({ limit: String(HISTORY_PAGE) });
    if (more && this.nextBefore) params.set("before", this.nextBefore);
    const filter = this.inbox.filter;
    if (filter) params.set("state", filter);
    let page;
    try {
      const answer = await this.session.fetch(`/api/calls?${params}`);
      if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
      page = await answer.json();
    } catch (error) {
      if (!(error instanceof SessionEnded) && this.session.active) {
        $("history-error").textContent = "Recent calls could not be loaded. They are loaded "
          + "again when a call ends.";
        $("history-error").hidden = false;
      }
      return;
    }
    if (!this.session.active || filter !== this.inbox.filter) return;
    this.inbox.learn(page.calls);
    $("history-error").hidden = true;
    const calls = page.calls.map((item) => callFrom(item));
    this.history = more ? [...this.history, ...calls] : calls;
    if (!more || calls.length) this.nextBefore = page.next_before;
    this.#renderHistory();
  }

  #renderHistory() {
    const list = $("history-list");
    const focused = document.activeElement?.closest?.("#history-list li")?.dataset.callId;
    list.replaceChildren(...this.history.map((call) => this.#historyItem(call)));
    $("history-empty").hidden = this.history.length > 0;
    $("history-more").hidden = !this.nextBefore;
    if (focused) list.querySelector(`li[data-call-id="${CSS.escape(focused)}"] button`)?.focus();
  }

  #historyItem(call) {
    const outcome = call.endedAt === null ? "in progress"
      : `${call.duration !== null ? clock(call.duration * 1000) : "—"} · ended: ${endReason(call.endReason)}`;
    const button = el("button", {
      type: "button", class: "call-item", "data-call-id": call.id,
      "data-inbox": this.inbox.stateOf(call.id),
      "aria-current": this.view?.id === call.id ? "true" : null,
    },
    el("span", { class: "caller" }, callerLabel(call),
      call.name ? el("span", { class: "number", text: ` ${call.number}` }) : null),
    el("span", { class: "when" }, el("time", { datetime: call.startedAt, text: dateAndTime(call.startedAt) })),
    el("span", { class: "detail", text: `To ${call.extension} · ${outcome}` }),
    el("span", { class: "badges" }, call.ai ? el("span", { class: "badge ai", text: "AI-handled" }) : null,
      this.inbox.badge(call.id)),
    call.summary ? el("span", { class: "reason", text: call.summary.reason }) : null);
    return el("li", { "data-call-id": call.id }, button);
  }

  // -- one call --

  #openCall(id) {
    if (this.view?.id === id) {
      $("call-title").focus();
      return;
    }
    this.#closeCall(false);
    const activeCall = this.active.get(id);
    const pastCall = this.history.find((call) => call.id === id);
    const call = activeCall ?? pastCall;
    if (call === undefined) return;
    const live = activeCall !== undefined || call.endedAt === null;
    this.view = { id, call, live, ended: !live };
    this.transcript.reset();
    this.#renderCallHeader();
    this.#markCurrent();
    this.inbox.show(id);
    $("call-view").hidden = false;
    $("app-view").classList.add("call-open");
    $("call-title").focus();
    this.#takeState(live ? "ready" : "hidden");
    if (live) {
      this.#callStatus("Connecting to the live call…", "");
      this.hub.subscribe(id, {
        onCall: (summary) => this.#liveCallSummary(id, summary),
        onEvent: (event) => this.#liveEvent(id, event),
        onError: (code, detail) => this.#callFailed(id, code, detail),
      });
    } else {
      this.#callStatus(this.#endedText(call), "ended");
      this.#loadTranscript(id);
    }
  }

  #knownCall(id) {
    return this.active.get(id) ?? this.history.find((call) => call.id === id);
  }

  /** Open the call a notification was about; one not (yet) in the lists is fetched first. */
  async #openNotified(id) {
    if (!this.session.active) return;
    if (this.#knownCall(id) === undefined) {
      try {
        const answer = await this.session.fetch(`/api/calls/${encodeURIComponent(id)}`);
        if (!answer.ok) return;
        const call = callFrom(await answer.json());
        if (this.#knownCall(id) === undefined) this.history.unshift(call);
      } catch {
        return;
      }
      if (!this.session.active) return;
      this.#renderHistory();
    }
    this.#openCall(id);
  }

  #closeCall(returnFocus) {
    const view = this.view;
    if (view === null) return;
    this.hub.unsubscribe(view.id);
    this.view = null;
    this.transcript.reset();
    this.player.hide();
    this.#takeState("hidden");
    this.inbox.show(null);
    $("call-view").hidden = true;
    $("app-view").classList.remove("call-open");
    this.#markCurrent();
    if (returnFocus) {
      const item = document.querySelector(`li[data-call-id="${CSS.escape(view.id)}"] button`);
      (item || $("active-title")).focus();
    }
  }

  #markCurrent() {
    for (const button of document.querySelectorAll("button.call-item")) {
      if (this.view?.id === button.dataset.callId) button.setAttribute("aria-current", "true");
      else button.removeAttribute("aria-current");
    }
  }

  #renderCallHeader() {
    const { call, ended } = this.view;
    $("call-title").textContent = call.name ? `${call.name} (${call.number})` : callerLabel(call);
    const meta = $("call-meta");
    meta.replaceChildren(`To ${call.extension} · started ${timeOfDay(call.startedAt)} · `);
    if (ended) {
      meta.append(call.duration !== null ? `lasted ${clock(call.duration * 1000)}` : "ended");
    } else {
      meta.append(el("time", { class: "elapsed", "data-since": call.startedAt,
        text: clock(Date.now() - Date.parse(call.startedAt)) }));
    }
    if (call.ai) meta.append(" ", el("span", { class: "badge ai", text: "AI-handled" }));
    this.#renderCard();
    this.player.show(this.view.id, ended ? call.recording : null);
  }

  /** The message card at the top of the call, once the call has one. */
  #renderCard() {
    const summary = this.view?.call.summary;
    $("call-card").hidden = !summary;
    if (!summary) return;
    $("card-name").textContent = summary.caller_name || "Not given";
    const number = summary.callback_number;
    $("card-callback").replaceChildren(
      summary.callback_requested ? "Asked to be called back" : "No call back asked for",
      number ? " · " : "",
      number ? el("a", { href: `tel:${number}`, text: number }) : "");
    $("card-reason").textContent = summary.reason;
    $("card-handled").textContent = HANDLED_BY[summary.handled_by] || summary.handled_by;
  }

  #callStatus(text, kind) {
    const status = $("call-status");
    status.textContent = text;
    status.className = `status ${kind}`;
  }

  #endedText(call) {
    const lasted = call.duration !== null ? ` after ${clock(call.duration * 1000)}` : "";
    return `Call ended${lasted}: ${endReason(call.endReason)}.`;
  }

  #liveCallSummary(id, summary) {
    if (this.view?.id !== id) return;
    const known = this.view.call;
    this.view.call = { ...callFrom(summary, id), startedAt: known.startedAt || summary.created_at };
    this.#renderCallHeader();
    if (!this.view.ended) this.#callStatus("Live", "live");
  }

  #liveEvent(id, event) {
    const view = this.view;
    if (view?.id !== id) return;
    const data = event.data || {};
    switch (event.event) {
      case "call_started":
        view.call = { ...view.call, startedAt: data.started_at || view.call.startedAt };
        this.#renderCallHeader();
        break;
      case "stt_transcript":
        if (data.is_final) this.transcript.final(data.speaker || "caller", data.text, event.seq);
        else this.transcript.interim(data.speaker || "caller", data.text);
        break;
      case "tts_started":
        this.transcript.botStarted(data.text, event.seq);
        break;
      case "tts_completed":
        this.transcript.botCompleted();
        break;
      case "dtmf":
        this.transcript.system(`Caller pressed ${data.digit}`, event.seq);
        break;
      case "call_recording":   // complete just before call_ended: the player shows then
        view.call = { ...view.call, recording: { url: `/api/calls/${encodeURIComponent(id)}/recording`,
          duration: data.duration, bytes: data.bytes } };
        break;
      case "transfer_started":
        this.transcript.system(`Transfer to ${view.call.extension} asked for`, event.seq);
        this.#takeState("moving", `Putting the call through to ${view.call.extension}…`);
        break;
      case "transfer_progress":   // the PBX accepted the REFER, is trying, is ringing
        this.#takeState("moving", transferProgressText(data, view.call.extension));
        break;
      case "transfer_failed":
        this.transcript.system(`The transfer failed: ${data.reason}`, event.seq);
        this.#takeState("ready", `The transfer failed (${data.reason}). The bot carries on.`,
          "failed");
        break;
      case "call_ended": {
        this.#takeState(data.reason === "transferred" ? "done" : "hidden",
          "The call was put through.");
        this.transcript.botCompleted();
        view.ended = true;
        view.call = { ...view.call, endReason: data.reason, duration: data.duration ?? null,
          endedAt: event.ts };
        this.#renderCallHeader();
        const text = this.#endedText(view.call);
        this.transcript.system(text, event.seq);
        this.#callStatus(text, "ended");
        this.hub.unsubscribe(id);
        break;
      }
      default:
        break;
    }
  }

  /** The Take this call button: hidden, ready, moving (a transfer runs) or done. */
  #takeState(state, text = "", kind = "") {
    $("take").hidden = state === "hidden";
    const button = $("call-take");
    button.disabled = state !== "ready";
    button.hidden = state === "done";
    const status = $("take-status");
    status.textContent = text;
    status.className = `take-status ${kind}`;
  }

  async #takeCall() {
    const view = this.view;
    if (view === null || view.ended) return;
    const id = view.id;
    this.#takeState("moving", "Asking the phone system to put the call through…");
    let answer;
    try {
      answer = await this.session.fetch(`/api/calls/${encodeURIComponent(id)}/transfer`,
        { method: "POST" });
    } catch (error) {
      if (!(error instanceof SessionEnded) && this.view?.id === id) {
        this.#takeState("ready", "The request did not reach the server. Try again.", "failed");
      }
      return;
    }
    if (this.view?.id !== id || this.view.ended) return;
    if (answer.status === 202) return;   // the hub tells how it goes
    const body = await answer.json().catch(() => ({}));
    const why = body.error === "in_progress" ? "A transfer of this call is already under way."
      : body.error === "not_live" ? "The call is no longer in progress."
        : answer.status === 404 ? "This call cannot be taken." : `The call cannot be taken (${body.detail || answer.status}).`;
    this.#takeState(body.error === "in_progress" ? "moving" : "ready", why, "failed");
  }

  #callFailed(id, code, detail) {
    if (this.view?.id !== id) return;
    const text = code === "not_found" || code === "forbidden"
      ? "This call cannot be shown." : `The live call cannot be followed (${detail}).`;
    this.#callStatus(text, "ended");
  }

  async #loadTranscript(id) {
    let body;
    try {
      const answer = await this.session.fetch(`/api/calls/${encodeURIComponent(id)}/transcript`);
      if (!answer.ok) {
        if (this.view?.id === id) this.#callStatus("This call's transcript cannot be shown.", "ended");
        return;
      }
      body = await answer.json();
    } catch {
      if (this.view?.id === id) this.#callStatus("The transcript could not be loaded.", "ended");
      return;
    }
    if (this.view?.id !== id) return;
    for (const entry of body.entries) {
      if (entry.final || entry.speaker === "bot") this.transcript.final(entry.speaker, entry.text, entry.seq);
      else this.transcript.interim(entry.speaker, entry.text);
    }
  }

  #announce(text) {
    $("announcer").textContent = text;
  }
}

new Dashboard();
