// Browser notifications for the calls the hub announces: call_started ("Call from …") and
// call_summary (the message card's reason and callback number), with an optional short sound.
//
// - Permission is asked only from the user's click on the toggle, never on load. The choice
//   (on/off, sound) is kept in localStorage for this browser; it is a preference, not a secret.
// - Only live lobby events get here (the Hub hands over the frames it receives, never a
//   subscription's backlog), and each (call, kind) notifies once, so a reconnect or resume
//   replays nothing.
// - A notice is skipped only when the person is already looking at that very call (the page is
//   visible, has the focus and shows the call); otherwise it is raised, even with the tab in
//   front, since the window may be behind another one or the person on another call.
// - The notification's tag is the call id, so the summary replaces the start notice; clicking
//   it focuses the window, closes it and opens the call.
// - The sound is two short tones made with the Web Audio API (no file, nothing for the CSP).

const STORAGE_KEY = "voicedashd.notifications";
const REMEMBERED = 500;           // (call, kind) pairs kept to notify once; oldest forgotten
const TONES = [[880, 0], [660, 0.14]];    // Hz, start (s): a short falling "ding-dong"
const TONE_S = 0.12;
const VOLUME = 0.12;

/** The stored choice: notifications on, and whether a sound goes with them. */
function loadChoice(storage) {
  try {
    const stored = JSON.parse(storage?.getItem(STORAGE_KEY) ?? "null");
    return { on: stored?.on === true, sound: stored?.sound === true };
  } catch {
    return { on: false, sound: false };     // unreadable or storage blocked: the defaults
  }
}

function saveChoice(storage, choice) {
  try {
    storage?.setItem(STORAGE_KEY, JSON.stringify(choice));
  } catch {
    // Storage full or blocked (private mode): the choice lasts for this page only.
  }
}

function browserStorage() {
  try {
    return window.localStorage;
  } catch {
    return null;       // some browsers throw when site data is blocked
  }
}

/** A short two-tone chime; the AudioContext is made from a user's gesture (autoplay rules). */
class Chime {
  #context = null;

  /** Make (or wake) the audio context; call from a click or key press. */
  unlock() {
    const Context = window.AudioContext || window.webkitAudioContext;
    if (Context === undefined) return;
    if (this.#context === null) this.#context = new Context();
    if (this.#context.state === "suspended") this.#context.resume().catch(() => {});
  }

  play() {
    const context = this.#context;
    if (context === null || context.state !== "running") return;
    const now = context.currentTime;
    for (const [frequency, start] of TONES) {
      const tone = context.createOscillator();
      const gain = context.createGain();
      tone.type = "sine";
      tone.frequency.value = frequency;
      // A quick rise and an exponential fall: no click at either end.
      gain.gain.setValueAtTime(0.0001, now + start);
      gain.gain.exponentialRampToValueAtTime(VOLUME, now + start + 0.01);
      gain.gain.exponentialRampToValueAtTime(0.0001, now + start + TONE_S);
      tone.connect(gain).connect(context.destination);
      tone.start(now + start);
      tone.stop(now + start + TONE_S + 0.02);
    }
  }
}

export class Notifier {
  #storage = browserStorage();
  #choice = loadChoice(this.#storage);
  #chime = new Chime();
  #done = new Set();          // "kind call-id" already notified (insertion order: oldest first)
  #callers = new Map();       // call id -> caller label from its call_started
  #shown = new Map();         // call id -> the Notification on screen
  #broken = false;            // the constructor threw (e.g. Android Chrome wants a worker)

  /**
   * elements: {toggle, state, sound, soundBox}; onOpen(callId) opens a call in the page;
   * isShowing(callId) tells whether the page shows that call now.
   */
  constructor(elements, onOpen, isShowing) {
    this.elements = elements;
    this.onOpen = onOpen;
    this.isShowing = isShowing;
    elements.toggle.addEventListener("click", () => this.#toggle());
    elements.sound.addEventListener("change", () => this.#soundChanged());
    if (this.#choice.sound) {
      // Autoplay rules let audio start only after a gesture: the first click or key will do.
      const unlock = () => {
        if (this.#choice.sound) this.#chime.unlock();
      };
      document.addEventListener("pointerdown", unlock, { once: true, capture: true });
      document.addEventListener("keydown", unlock, { once: true, capture: true });
    }
    // Permission changed in the browser's site settings: show it without a reload.
    navigator.permissions?.query({ name: "notifications" })
      .then((status) => status.addEventListener("change", () => this.#render()))
      .catch(() => {});
    this.#render();
  }

  /** What the browser allows: unsupported, default, granted or denied. */
  get permission() {
    if (this.#broken || typeof window.Notification !== "function" || !window.isSecureContext) {
      return "unsupported";
    }
    return window.Notification.permission;
  }

  get on() {
    return this.#choice.on && this.permission === "granted";
  }

  /** A lobby event from the hub; label is the page's caller label for the call, if it has one. */
  lobby(event, label) {
    const id = event.call_id;
    const data = event.data || {};
    if (event.event === "call_started") {
      const caller = label || data.caller_name || data.caller;
      if (caller) this.#remember(this.#callers, id, caller);
      this.#raise("call_started", id, `Call from ${caller || "an unknown caller"}`,
        data.callee_extension ? `to extension ${data.callee_extension}` : "");
    } else if (event.event === "call_summary") {
      const caller = data.caller_name || this.#callers.get(id) || label || "a caller";
      const lines = [data.reason || "No reason given."];
      if (data.callback_number) lines.push(`Call back: ${data.callback_number}`);
      else if (data.callback_requested) lines.push("Asked to be called back.");
      this.#raise("call_summary", id, `Message from ${caller}`, lines.join("\n"));
    }
  }

  /** Forget everything about the session that ended; close its notifications. */
  reset() {
    for (const notification of this.#shown.values()) notification.close();
    this.#shown.clear();
    this.#done.clear();
    this.#callers.clear();
  }

  #raise(kind, id, title, body) {
    const key = `${kind} ${id}`;
    if (this.#done.has(key)) return;
    this.#remember(this.#done, key);
    if (!this.on) return;
    const looking = document.visibilityState === "visible" && document.hasFocus()
      && this.isShowing(id);
    if (looking) return;
    let notification;
    try {
      notification = new window.Notification(title, { body, tag: id, renotify: true });
    } catch {
      this.#broken = true;       // cannot be shown from a page here: say so on the toggle
      this.#render();
      return;
    }
    // The tag makes the browser replace the call's earlier notice; this object stands for it now.
    this.#shown.set(id, notification);
    notification.addEventListener("close", () => {
      if (this.#shown.get(id) === notification) this.#shown.delete(id);
    });
    notification.addEventListener("click", () => {
      window.focus();
      notification.close();
      this.onOpen(id);
    });
    if (this.#choice.sound) this.#chime.play();
  }

  /** Add to a bounded Set (value undefined) or Map, forgetting the oldest entry when full. */
  #remember(table, key, value) {
    table.delete(key);
    if (table instanceof Map) table.set(key, value);
    else table.add(key);
    if (table.size > REMEMBERED) table.delete(table.keys().next().value);
  }

  async #toggle() {
    if (this.on) {
      this.#choose({ on: false });
      return;
    }
    const permission = this.permission;
    if (permission === "unsupported" || permission === "denied") {
      this.#render();
      return;
    }
    if (this.#choice.sound) this.#chime.unlock();
    try {
      // Asked on every "turn on" click; the browser prompts only while it is undecided.
      await window.Notification.requestPermission();
    } catch {
      // Old browsers take a callback instead of returning a promise; the state says enough.
    }
    this.#choose({ on: this.permission === "granted" });
  }

  #soundChanged() {
    const sound = this.elements.sound.checked;
    if (sound) {
      this.#chime.unlock();            // this change is a gesture: audio may start now
      this.#choose({ sound });
      this.#chime.play();              // a sample, so the person knows what to listen for
    } else {
      this.#choose({ sound });
    }
  }

  #choose(change) {
    this.#choice = { ...this.#choice, ...change };
    saveChoice(this.#storage, this.#choice);
    this.#render();
  }

  #render() {
    const { toggle, state, sound, soundBox } = this.elements;
    const permission = this.permission;
    const on = this.on;
    toggle.dataset.state = on ? "on" : permission === "unsupported" ? "unsupported"
      : permission === "denied" ? "blocked" : "off";
    toggle.textContent = on ? "Turn off notifications" : "Turn on notifications";
    toggle.disabled = !on && (permission === "unsupported" || permission === "denied");
    state.textContent = on ? "Notifications on"
      : permission === "denied" ? "Notifications blocked by the browser (allow them in its site settings)"
        : permission !== "unsupported" ? ""
          : window.isSecureContext ? "Notifications not supported by this browser"
            : "Notifications need https (or localhost)";
    state.hidden = state.textContent === "";
    sound.checked = this.#choice.sound;
    soundBox.hidden = !on;
  }
}
