// meshnode.js: the browser client of a meshnode edge (docs/BROWSER.md).
// An ES module with no dependencies, served by every edge at /meshnode.js.
//
//   import {connect} from "/meshnode.js";
//   const mesh = connect("ws://127.0.0.1:8400/ws", {getToken: async () => (await fetch("/token")).text()});
//   mesh.addEventListener("connect", () => console.log("up"));
//   const sub = mesh.subscribe("chat.>", (msg) => console.log(msg.subject, msg.data), {recover: true});
//   await mesh.publish("chat.room1", {text: "hi"});
//   const answer = await mesh.request("time.now", null, {timeout: 2});
//
// connect() takes one edge's URL or a list (each reconnect tries the next).
// It reconnects by itself (exponential backoff with jitter), subscribes again
// and recovers what each subscription missed from the mesh's history, from
// the last message it saw on each stream, at the same or another edge; each
// message reaches its subscription once, in each publisher's order, and
// `sub.recovered` says whether the last recovery was complete. With getToken
// it asks for a new token shortly before the current one expires and sends it
// in-band (no reconnect). Events: connect, disconnect, error, recovery.

const SUBJECT_MAX = 512;
const MAX_STREAMS = 1000;  // a position names at most this many streams (the edge's limit)
const STREAM_IDLE = 60;  // seconds: a stream not heard from for this long is forgotten, as the Python client does
const STABLE_MS = 5000;  // a connection up this long resets the reconnect backoff

export class MeshError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.code = code;
  }
}

function tokens(text, what) {
  if (typeof text !== "string" || !text) throw new MeshError("invalid_subject", `${what} must be a non-empty string`);
  if (new TextEncoder().encode(text).length > SUBJECT_MAX) throw new MeshError("invalid_subject", `${what} is over ${SUBJECT_MAX} bytes`);
  if (/[\s\u0000]/.test(text)) throw new MeshError("invalid_subject", `${what} ${JSON.stringify(text)} contains whitespace`);
  const parts = text.split(".");
  if (parts.includes("")) throw new MeshError("invalid_subject", `${what} ${JSON.stringify(text)} has an empty token`);
  return parts;
}

function checkSubject(subject) {
  if (tokens(subject, "subject").some(t => t.includes("*") || t.includes(">")))
    throw new MeshError("invalid_subject", `subject ${JSON.stringify(subject)} contains a wildcard`);
}

// The mesh's matching rule (docs/PROTOCOL.md 3.2), system subjects included.
export function matches(pattern, subject) {
  const want = pattern.split("."), got = subject.split(".");
  if ((want[0] === "*" || want[0] === ">") && subject.startsWith("$")) return false;
  for (let i = 0; i < want.length; i++) {
    if (want[i] === ">") return got.length > i;
    if (i >= got.length || (want[i] !== "*" && want[i] !== got[i])) return false;
  }
  return want.length === got.length;
}

function tokenExpiry(token) {
  try {
    const payload = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return typeof payload.exp === "number" ? payload.exp : null;
  } catch (e) {
    return null;
  }
}

export class Subscription {
  constructor(connection, pattern, onMessage, recover) {
    this.connection = connection;
    this.pattern = pattern;
    this.onMessage = onMessage;
    this.recover = recover;
    this.streams = new Map();  // "origin\0subject" -> {stream: [origin, subject, epoch, seq], seen: s}
    this.newest = 0;  // the newest message's ts
    this.received = 0;  // messages handed to onMessage (duplicates dropped before it, not counted)
    this.gaps = 0;  // messages a publisher sent that never arrived
    this.live = false;  // the edge said ok once
    this.recovered = null;  // after a reconnect with recover: true or false
    this.lastRecovery = null;  // the edge's answer: {recovered, replayed, incomplete, unreachable}
    this.closed = false;
    // the edge's first ok (or error) for this subscription, whenever the connection comes up
    this.ready = new Promise((resolve, reject) => { this._settle = {resolve, reject}; });
    this.ready.catch(() => {});  // an error is also an "error" event: not an unhandled rejection
  }

  // How far this subscription got: what a recovery starts from (docs/HISTORY.md).
  // Streams idle for STREAM_IDLE seconds are left out (a recovery finds them by time), and at most
  // the MAX_STREAMS most recent are named.
  position() {
    const now = Date.now() / 1000;
    for (const [key, entry] of this.streams) if (now - entry.seen > STREAM_IDLE) this.streams.delete(key);
    const named = [...this.streams.values()].sort((a, b) => b.seen - a.seen).slice(0, MAX_STREAMS);
    return {t: this.newest, s: named.map(entry => entry.stream)};
  }

  _accept(frame) {
    const key = frame.origin + "\u0000" + frame.subject;
    const last = this.streams.get(key)?.stream;
    if (last && last[2] === frame.epoch) {
      if (frame.seq <= last[3]) return;  // a copy already seen (a replay meeting live delivery, overlapping patterns)
      this.gaps += frame.seq - last[3] - 1;
    } else if (last && frame.epoch < last[2]) {
      return;  // an older stream of the same publisher
    }
    this.streams.delete(key);  // re-inserted: the map stays in order of last use
    this.streams.set(key, {stream: [frame.origin, frame.subject, frame.epoch, frame.seq], seen: Date.now() / 1000});
    if (this.streams.size > 4 * MAX_STREAMS) this.streams.delete(this.streams.keys().next().value);
    this.newest = Math.max(this.newest, frame.ts);
    this.received++;
    try {
      this.onMessage(frame);
    } catch (error) {
      this.connection._emit("error", {error});
    }
  }

  unsubscribe() {
    if (this.closed) return Promise.resolve();
    this.closed = true;
    this.connection.subscriptions.delete(this.pattern);
    return this.connection._ask({op: "unsub", subject: this.pattern}).catch(() => {});
  }
}

export class Connection extends EventTarget {
  constructor(url, options = {}) {
    super();
    this.urls = Array.isArray(url) ? url : [url];  // several edges: each reconnect tries the next
    this.url = this.urls[0];
    this.token = options.token || null;
    this.getToken = options.getToken || null;
    this.minDelay = options.minDelay ?? 250;  // ms, the first reconnect's base
    this.maxDelay = options.maxDelay ?? 15000;
    this.refreshBefore = options.refreshBefore ?? 10;  // seconds before exp
    this.requestTimeout = options.timeout ?? 10;  // seconds an ok may take
    this.subscriptions = new Map();  // pattern -> Subscription
    this.connected = false;
    this.closed = false;
    this.reconnects = 0;
    this.attempts = 0;  // failed attempts in the current outage
    this._down = false;  // a disconnect was announced and no connection came up since
    this._ws = null;
    this._pending = new Map();  // id -> {resolve, reject, timer}
    this._nextId = 1;
    this._attempt = 0;
    this._refreshTimer = null;
    this._stableTimer = null;
    this._open();
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, {detail}));
  }

  async _freshToken() {
    if (this.getToken) this.token = await this.getToken();
    return this.token;
  }

  async _open() {
    if (this.closed) return;
    let token;
    try {
      token = await this._freshToken();
    } catch (error) {
      this._emit("error", {error});
      return this._retry();
    }
    if (this.closed) return;  // closed while the token was on its way
    this.url = this.urls[this.reconnects % this.urls.length];
    const url = token ? this.url + (this.url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : this.url;
    const ws = this._ws = new WebSocket(url);
    ws.onopen = () => this._opened(ws);
    ws.onmessage = (event) => this._frame(event.data);
    ws.onclose = (event) => this._closed(ws, event);
    ws.onerror = () => {};  // onclose follows, with the code
  }

  _opened(ws) {
    if (ws !== this._ws) return;
    this.connected = true;
    const again = this._attempt > 0 || this.reconnects > 0;
    clearTimeout(this._stableTimer);  // the backoff starts over only once a connection has lasted
    this._stableTimer = setTimeout(() => { if (ws === this._ws) this._attempt = 0; }, STABLE_MS);
    this._scheduleRefresh();
    this._emit("connect", {reconnect: again, attempts: this.attempts});
    this._down = false;
    this.attempts = 0;
    for (const sub of this.subscriptions.values()) this._subscribeOnWire(sub, again);
  }

  _subscribeOnWire(sub, again) {
    const frame = {op: "sub", subject: sub.pattern};
    const withHistory = sub.recover && again && sub.live;
    if (withHistory) frame.recover = sub.position();
    return this._ask(frame).then((ok) => {
      if (!sub.live) {  // from now on a recovery starts here at the latest
        sub.live = true;
        sub.newest = Math.max(sub.newest, Date.now() / 1000);
      }
      sub._settle.resolve(ok);
      if (withHistory) {
        sub.recovered = ok.recovered === true;
        sub.lastRecovery = ok;
        this._emit("recovery", {subscription: sub, ...ok});
      }
      return ok;
    }, (error) => {
      if (["forbidden", "invalid_subject", "too_many_subscriptions"].includes(error.code)) {
        sub.closed = true;  // it would fail again on every reconnect
        this.subscriptions.delete(sub.pattern);
      }
      sub._settle.reject(error);
      this._emit("error", {error, subscription: sub});
      throw error;
    });
  }

  _closed(ws, event) {
    if (ws !== this._ws) return;
    this.connected = false;
    clearTimeout(this._refreshTimer);
    for (const [id, waiter] of this._pending) {
      clearTimeout(waiter.timer);
      waiter.reject(new MeshError("disconnected", "the connection closed before the answer"));
    }
    this._pending.clear();
    if (this._down) {
      this.attempts++;  // a reconnect that failed: the outage goes on
    } else {
      this._down = true;
      this._emit("disconnect", {code: event.code, reason: event.reason});
    }
    if (!this.closed) this._retry();
  }

  _retry() {
    const base = Math.min(this.maxDelay, this.minDelay * 2 ** this._attempt++);
    this.reconnects++;
    setTimeout(() => this._open(), base * (0.5 + Math.random()));
  }

  _scheduleRefresh() {
    clearTimeout(this._refreshTimer);
    const exp = this.token && this.getToken ? tokenExpiry(this.token) : null;
    if (exp === null) return;
    const remaining = exp * 1000 - Date.now();
    if (remaining <= 0) return;  // the edge ends it now: the reconnect asks for a new token
    // refreshBefore ahead of exp, or halfway for a token that lives less than that
    const wait = Math.max(remaining / 2, remaining - this.refreshBefore * 1000);
    this._refreshTimer = setTimeout(async () => {
      try {
        const token = await this._freshToken();
        await this._ask({op: "refresh", token});
        this._scheduleRefresh();
      } catch (error) {
        this._emit("error", {error});  // the edge closes at exp (4001): we reconnect with a new token
      }
    }, wait);
  }

  _frame(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch (error) {
      return this._emit("error", {error});
    }
    if (frame.op === "msg") {
      for (const sub of this.subscriptions.values()) if (matches(sub.pattern, frame.subject)) sub._accept(frame);
    } else if (frame.op === "ok" || frame.op === "reply" || frame.op === "error") {
      const waiter = this._pending.get(frame.id);
      if (waiter === undefined) {
        if (frame.op === "error") this._emit("error", {error: new MeshError(frame.code, frame.message), frame});
        return;
      }
      this._pending.delete(frame.id);
      clearTimeout(waiter.timer);
      if (frame.op === "error") waiter.reject(new MeshError(frame.code, frame.message));
      else waiter.resolve(frame);
    }
  }

  _ask(frame, seconds = this.requestTimeout) {
    if (this.closed) return Promise.reject(new MeshError("closed", "the connection is closed"));
    if (!this.connected) return Promise.reject(new MeshError("disconnected", "not connected; try again"));
    return new Promise((resolve, reject) => {
      frame.id = this._nextId++;
      const timer = setTimeout(() => {
        this._pending.delete(frame.id);
        reject(new MeshError("timeout", `no answer to ${frame.op} within ${seconds} s`));
      }, seconds * 1000);
      this._pending.set(frame.id, {resolve, reject, timer});
      this._ws.send(JSON.stringify(frame));
    });
  }

  // Subscribe to a pattern; onMessage(msg) gets {subject, data, origin, epoch, seq, ts, replayed?}.
  // With {recover: true} a reconnect brings what was missed (nodes with --history).
  subscribe(pattern, onMessage, {recover = true} = {}) {
    if (this.closed) throw new MeshError("closed", "the connection is closed");
    tokens(pattern, "pattern");
    if (this.subscriptions.has(pattern)) throw new MeshError("duplicate", `already subscribed to ${pattern}`);
    const sub = new Subscription(this, pattern, onMessage, recover);
    this.subscriptions.set(pattern, sub);
    if (this.connected) this._subscribeOnWire(sub, false).catch(() => {});  // else on connect
    return sub;
  }

  // Publish any JSON value; resolves once the edge accepted it.
  publish(subject, data) {
    checkSubject(subject);
    return this._ask({op: "pub", subject, data});
  }

  // A request (docs/EDGE.md): resolves with the reply's data.
  request(subject, data, {timeout = 5} = {}) {
    checkSubject(subject);
    return this._ask({op: "req", subject, data, timeout}, timeout + 5).then(reply => reply.data);
  }

  close() {
    this.closed = true;
    clearTimeout(this._refreshTimer);
    for (const sub of this.subscriptions.values()) sub.closed = true;
    this.subscriptions.clear();
    if (this._ws) this._ws.close(1000);
  }
}

export function connect(url, options) {
  return new Connection(url, options);
}
