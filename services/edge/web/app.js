// realtime-switch browser client: one seed-URL WebSocket to the edge that served this page, in the OpenAI GA, OpenAI
// beta or Gemini Live dialect. Microphone -> AudioWorklet (resampled to the dialect's rate) -> audio events; answers
// -> jitter buffer -> speakers; a switch button, a timeline of switches and turns, and a filterable event log.
// Turns are taken by server voice activity detection (OpenAI server_vad, Gemini automatic activity detection);
// typed turns go in the text box.
import { base64ToPcm16, pcm16ToBase64 } from "/web/audio-core.js";

const DEV_ACCOUNT = "996-sdassds-86-asd";
const DEV_SECRET = "secretkey-996"; // the documented default dev account, filled in only in dev mode
const OUTPUT_RATE = 24000; // both dialects answer in 24 kHz PCM16
const VOICE_RMS = 0.02; // a mic chunk this loud is speech, for the page's own end-of-speech clock
const LOG_LIMIT = 800;
const $ = (id) => document.getElementById(id);

// What tests and curious people read: window.rsStats (counters), window.rsLog (every frame's type, both ways).
const stats = {
  playedSamples: 0, // 24 kHz samples the jitter buffer actually played
  receivedSamples: 0,
  sentSamples: 0,
  sentAudioFrames: 0,
  bufferedMs: 0,
  underruns: 0,
  turns: 0,
  switches: 0,
  interruptions: 0,
  errors: 0,
};
window.rsStats = stats;
window.rsLog = [];

let S = null; // the live session, or null

// ---------------------------------------------------------------------------------------------------------------
// Auth. Browsers cannot put headers on a WebSocket, so the seed URL carries rs_auth = hex HMAC-SHA256(secret,
// session id). Dev mode signs here with WebCrypto (the secret is in the page); a signed-token mode takes an rs_auth
// (and rs_exp) minted elsewhere (POST /v1/realtime/client_secrets by the application's backend) so the secret never
// reaches the browser.

async function hmacHex(secret, message) {
  if (!window.crypto || !crypto.subtle) throw new Error("WebCrypto needs a secure context (https or localhost)");
  const enc = new TextEncoder();
  const key = await crypto.subtle.importKey("raw", enc.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, [
    "sign",
  ]);
  const mac = new Uint8Array(await crypto.subtle.sign("HMAC", key, enc.encode(message)));
  return Array.from(mac, (b) => b.toString(16).padStart(2, "0")).join("");
}

// Dev mode asks the edge's token endpoint for a short-lived client token bound to the session (the URL then
// carries the token, never a signature made with the secret); an edge without the endpoint gets the HMAC.
async function devToken(session) {
  const account = $("account").value.trim();
  try {
    const reply = await fetch("/v1/realtime/client_secrets", {
      method: "POST",
      headers: { Authorization: `Bearer ${account}:${$("secret").value}`, "Content-Type": "application/json" },
      body: JSON.stringify({ expires_after: { anchor: "created_at", seconds: 600 }, rs_u_sessid: session }),
    });
    if (reply.ok) {
      const token = (await reply.json()).value;
      if (typeof token === "string" && token.startsWith("ek_")) return { rs_auth: token };
    }
  } catch (err) {
    log("local", "token", `token endpoint unavailable (${err}); signing in the page`);
  }
  return { rs_auth: await hmacHex($("secret").value, session) };
}

const AUTH = {
  dev: devToken,
  token: async () => {
    const rs_auth = $("token").value.trim();
    if (!/^([0-9a-f]{64}|ek_[A-Za-z0-9_.-]+)$/i.test(rs_auth)) {
      throw new Error("rs_auth must be a client token (ek_...) or 64 hex characters");
    }
    const exp = $("tokenExp").value.trim();
    return exp ? { rs_auth, rs_exp: exp } : { rs_auth };
  },
};

function authMode() {
  return document.querySelector('input[name="authMode"]:checked').value;
}

function showAuthMode() {
  const dev = authMode() === "dev";
  document.body.classList.toggle("dev", dev);
  document.body.classList.toggle("token", !dev);
  $("devNotice").hidden = !dev;
  // Outside dev mode the page holds no secret at all.
  $("secret").value = dev && $("account").value === DEV_ACCOUNT ? DEV_SECRET : "";
}

// ---------------------------------------------------------------------------------------------------------------
// Dialects: what goes on the wire. Each is a table of client frames plus a table of server handlers.

const OPENAI_NAMES = {
  openai_ga: {
    rsApi: "OPENAI_GA",
    audio: "response.output_audio.delta",
    transcript: "response.output_audio_transcript.delta",
    text: "response.output_text.delta",
    session: () => ({
      type: "realtime",
      output_modalities: ["audio"],
      audio: {
        input: {
          format: { type: "audio/pcm", rate: 24000 },
          transcription: { model: "gpt-4o-mini-transcribe" },
          turn_detection: { type: "server_vad", silence_duration_ms: 500, create_response: true, interrupt_response: true },
        },
        output: { format: { type: "audio/pcm", rate: 24000 } },
      },
    }),
  },
  openai_beta: {
    rsApi: "OPENAI",
    audio: "response.audio.delta",
    transcript: "response.audio_transcript.delta",
    text: "response.text.delta",
    session: () => ({
      modalities: ["text", "audio"],
      input_audio_format: "pcm16",
      output_audio_format: "pcm16",
      input_audio_transcription: { model: "whisper-1" },
      turn_detection: { type: "server_vad", silence_duration_ms: 500, create_response: true, interrupt_response: true },
    }),
  },
};

function openaiDialect(name) {
  const n = OPENAI_NAMES[name];
  const handlers = {
    "session.created": (m) => {
      servedBy(m.session);
      send({ type: "session.update", session: n.session() });
      sessionReady();
    },
    "session.updated": (m) => servedBy(m.session),
    "input_audio_buffer.speech_started": () => interrupt(),
    "input_audio_buffer.committed": (m) => userLine(m.item_id),
    "conversation.item.input_audio_transcription.delta": (m) => userLine(m.item_id).append(m.delta || ""),
    "conversation.item.input_audio_transcription.completed": (m) => userLine(m.item_id).set(m.transcript || ""),
    "response.created": (m) => responseStarted(m.response && m.response.id),
    [n.audio]: (m) => audioIn(base64ToPcm16(m.delta), m.item_id),
    [n.transcript]: (m) => assistantLine(m.item_id).append(m.delta || ""),
    [n.text]: (m) => assistantLine(m.item_id).append(m.delta || ""),
    "response.done": (m) => responseDone(m.response && m.response.status),
    error: (m) => gatewayError(m.error || {}),
    // The seed's own switch announcement, then ours with the details.
    switch: (m) => seedSwitch(m.name),
    "rs.switched": (m) => switched({ from: m.from, to: m.to, reason: m.reason, gapMs: m.gap_ms }),
  };
  return {
    rsApi: n.rsApi,
    inputRate: 24000,
    open() {}, // the server speaks first (session.created)
    audio: (pcm) => send({ type: "input_audio_buffer.append", audio: pcm16ToBase64(pcm) }),
    text(text) {
      send({ type: "conversation.item.create", item: { type: "message", role: "user", content: [{ type: "input_text", text }] } });
      send({ type: "response.create" });
    },
    truncate: (itemId, ms) => send({ type: "conversation.item.truncate", item_id: itemId, content_index: 0, audio_end_ms: ms }),
    switchTo: (provider, when) => send({ type: "rs.switch", provider: provider.toUpperCase(), when }),
    typeOf: (m) => m.type,
    receive(m) {
      const handler = handlers[m.type];
      if (handler) handler(m);
      else if (typeof m.type === "string" && m.type.startsWith("rs.")) notice(m.type, m);
    },
  };
}

// Gemini: one top-level key per frame; serverContent carries audio, transcripts and turn boundaries together.
const GEMINI_CONTENT = [
  ["interrupted", () => interrupt()],
  ["inputTranscription", (v) => userLine(S.turnKey).append(v.text || "")],
  ["modelTurn", (v) => {
    responseStarted(S.turnKey);
    for (const part of v.parts || []) {
      if (part.inlineData && (part.inlineData.mimeType || "").startsWith("audio/pcm")) {
        audioIn(base64ToPcm16(part.inlineData.data), S.turnKey);
      } else if (part.text && !part.thought) assistantLine(S.turnKey).append(part.text);
    }
  }],
  ["outputTranscription", (v) => {
    responseStarted(S.turnKey);
    assistantLine(S.turnKey).append(v.text || "");
  }],
  ["turnComplete", () => responseDone("completed")],
];

function geminiDialect() {
  const top = {
    setupComplete: () => sessionReady(),
    serverContent: (v) => {
      for (const [key, handle] of GEMINI_CONTENT) if (v[key]) handle(v[key]);
    },
    goAway: (v) => notice("goAway", v),
  };
  return {
    rsApi: "GEMINI",
    inputRate: 16000,
    open() {
      send({
        setup: {
          model: "models/gemini-live-2.5-flash-preview",
          generationConfig: { responseModalities: ["AUDIO"] },
          inputAudioTranscription: {},
          outputAudioTranscription: {},
          realtimeInputConfig: { automaticActivityDetection: { disabled: false } },
        },
      });
    },
    audio: (pcm) => send({ realtimeInput: { audio: { data: pcm16ToBase64(pcm), mimeType: "audio/pcm;rate=16000" } } }),
    text: (text) => send({ clientContent: { turns: [{ role: "user", parts: [{ text }] }], turnComplete: true } }),
    truncate: null, // Gemini keeps what was heard on its own
    switchTo: (provider, when) => send({ rsSwitch: { provider: provider.toUpperCase(), when } }),
    typeOf: (m) => Object.keys(m).map((k) => (k === "serverContent" || k === "realtimeInput" ? `${k}.${Object.keys(m[k]).join("+")}` : k)).join(","),
    receive(m) {
      for (const [key, value] of Object.entries(m)) {
        if (top[key]) top[key](value);
        else if (key.startsWith("rs")) geminiNotice(key, value);
      }
    },
  };
}

const DIALECTS = { openai_ga: () => openaiDialect("openai_ga"), openai_beta: () => openaiDialect("openai_beta"), gemini: geminiDialect };

// ---------------------------------------------------------------------------------------------------------------
// Session lifecycle

function seedUrl(dialect, session, provider, auth) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const q = new URLSearchParams({
    rs_accid: $("account").value.trim(),
    rs_u_sessid: session,
    rs_api: dialect.rsApi,
    rs_core: provider.toUpperCase(),
    ...auth,
  });
  q.set("rs_notices", "1"); // in-band notices: Gemini's rsSwitched, OpenAI's rs.notice (shown in the timeline)
  return `${scheme}//${location.host}/?${q}`;
}

async function start() {
  const session = $("session").value.trim();
  if (!/^[\x21-\x7e]{1,256}$/.test(session)) throw new Error("session: 1-256 printable characters, no spaces");
  const dialectName = $("dialect").value;
  const provider = $("providerSelect").value;
  const dialect = DIALECTS[dialectName]();
  const auth = await AUTH[authMode()](session);
  S = {
    dialect, dialectName, provider, ready: false, ws: null, ctx: null, player: null, mic: null, capture: null,
    turnKey: 0, response: null, cut: new Set(), lastVoiceAt: 0, lastTypedAt: 0, switchAskedAt: 0, lines: new Map(),
  };
  setStatus("connecting");
  setProvider(provider);
  // The AudioContext is made inside the click: browsers only let a user gesture start audio.
  S.ctx = new AudioContext({ latencyHint: "interactive" });
  await S.ctx.audioWorklet.addModule("/web/worklet.js");
  S.player = new AudioWorkletNode(S.ctx, "rs-player", { processorOptions: { rate: OUTPUT_RATE }, outputChannelCount: [1] });
  S.player.port.onmessage = (e) => playerMessage(e.data);
  S.player.connect(S.ctx.destination);
  await S.ctx.resume();

  const url = seedUrl(dialect, session, provider, auth);
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  S.ws = ws;
  const mine = S;
  ws.onopen = () => {
    if (S !== mine) return;
    timeline("session", `connected: ${$("dialect").selectedOptions[0].text} on ${provider}`);
    log("local", "open", url.replace(/rs_auth=[^&]+/i, "rs_auth=…"));
    dialect.open();
  };
  ws.onmessage = (e) => {
    if (S !== mine) return;
    const text = typeof e.data === "string" ? e.data : new TextDecoder().decode(e.data);
    let m;
    try {
      m = JSON.parse(text);
    } catch {
      log("recv", "invalid-json", text.slice(0, 120));
      return;
    }
    log("recv", dialect.typeOf(m), m);
    dialect.receive(m);
  };
  ws.onclose = (e) => {
    if (S !== mine) return;
    const why = `${e.code}${e.reason ? " " + e.reason : ""}`;
    log("local", "close", why);
    timeline(e.code === 1000 ? "session" : "error", `socket closed: ${why}`);
    teardown("closed");
  };
  setButtons(true);
}

async function sessionReady() {
  if (S.ready) return;
  S.ready = true;
  setStatus("live");
  setButtons(true);
  const mine = S;
  try {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: $("echoCancel").checked, noiseSuppression: false, autoGainControl: false },
    });
    if (S !== mine) {
      stream.getTracks().forEach((t) => t.stop());
      return;
    }
    S.mic = stream;
    const source = S.ctx.createMediaStreamSource(stream);
    S.capture = new AudioWorkletNode(S.ctx, "rs-capture", {
      numberOfOutputs: 0,
      processorOptions: { rate: S.dialect.inputRate },
    });
    S.capture.port.onmessage = (e) => micChunk(e.data);
    source.connect(S.capture);
    $("mute").disabled = false;
    log("local", "mic", `capturing at ${S.ctx.sampleRate} Hz, sending ${S.dialect.inputRate} Hz PCM16`);
  } catch (err) {
    timeline("error", `microphone unavailable (${err.name || err}): typed turns still work`);
  }
}

function stop() {
  if (!S) return;
  if (S.ws && S.ws.readyState <= WebSocket.OPEN) S.ws.close(1000, "client stop");
  timeline("session", "stopped");
  teardown("idle");
}

function teardown(status) {
  if (!S) return;
  if (S.mic) S.mic.getTracks().forEach((t) => t.stop());
  if (S.ctx) S.ctx.close();
  S = null;
  $("mute").textContent = "Mute mic";
  setStatus(status);
  setButtons(false);
}

function send(frame) {
  if (!S || !S.ws || S.ws.readyState !== WebSocket.OPEN) return false;
  S.ws.send(JSON.stringify(frame));
  log("sent", S.dialect.typeOf(frame), frame);
  return true;
}

// ---------------------------------------------------------------------------------------------------------------
// Audio in both directions

function micChunk(msg) {
  const level = $("level");
  level.style.width = `${Math.min(100, Math.round(msg.rms * 400))}%`;
  if (!S || !S.ready) return;
  if (msg.rms >= VOICE_RMS) S.lastVoiceAt = performance.now();
  if (S.dialect.audio(msg.pcm)) {
    stats.sentAudioFrames += 1;
    stats.sentSamples += msg.pcm.length;
  }
}

function audioIn(pcm, tag) {
  if (S.cut.has(tag)) return; // late audio of an answer the user talked over
  const r = S.response;
  if (r && r.firstAudioAt === null) {
    r.firstAudioAt = performance.now();
    const t0 = Math.max(S.lastVoiceAt, S.lastTypedAt);
    const ttfa = t0 ? Math.round(r.firstAudioAt - t0) : null;
    r.ttfa = ttfa;
    timeline("turn", `turn ${r.n} on ${S.provider}: first audio ${ttfa === null ? "–" : ttfa + " ms"}`, { ttfa });
  }
  if (r) r.audioTag = tag;
  stats.receivedSamples += pcm.length;
  S.player.port.postMessage({ type: "push", pcm, tag }, [pcm.buffer]);
}

function playerMessage(msg) {
  if (msg.type === "stats") {
    stats.playedSamples = msg.playedSamples;
    stats.bufferedMs = msg.bufferedMs;
    stats.underruns = msg.underruns;
  } else if (msg.type === "flushed" && S && S.dialect.truncate && typeof msg.tag === "string") {
    S.dialect.truncate(msg.tag, Math.floor(msg.heardMs));
  }
}

// Barge-in: the gateway says the user started talking (OpenAI speech_started, Gemini interrupted). Stop playback at
// once; on OpenAI also tell the server how much of the answer was heard.
function interrupt() {
  const r = S.response;
  if (!(r && !r.done) && stats.bufferedMs === 0) return; // nothing is playing: an ordinary next turn
  const tag = r && r.audioTag !== undefined ? r.audioTag : null;
  if (tag !== null) S.cut.add(tag);
  stats.interruptions += 1;
  S.player.port.postMessage({ type: "flush", tag });
  log("local", "interrupted", "playback stopped");
}

// ---------------------------------------------------------------------------------------------------------------
// Turns, transcripts, switches

function responseStarted(key) {
  if (S.response && !S.response.done) return;
  stats.turns += 1;
  S.response = { n: stats.turns, key, firstAudioAt: null, done: false, provider: S.provider };
}

function responseDone(status) {
  if (S.response) S.response.done = true;
  S.player.port.postMessage({ type: "complete" });
  if (status && status !== "completed") log("local", "response", status);
  S.turnKey += 1; // Gemini: the next serverContent belongs to a new turn
}

function line(role, key) {
  const id = `${role}:${key}`;
  let li = S.lines.get(id);
  if (!li) {
    li = document.createElement("li");
    li.className = role;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "you" : S.provider;
    const text = document.createElement("span");
    text.className = "text";
    li.append(who, text);
    $("transcript").append(li);
    li.scrollIntoView({ block: "nearest" });
    S.lines.set(id, li);
  }
  const text = li.querySelector(".text");
  return {
    append: (s) => (text.textContent += s),
    set: (s) => (text.textContent = s),
  };
}

const userLine = (key) => line("user", `u${key}`);
const assistantLine = (key) => line("assistant", `a${key}`);

function typed(text) {
  if (!S || !S.ready || !text) return;
  S.lastTypedAt = performance.now();
  const li = document.createElement("li");
  li.className = "user";
  li.innerHTML = '<span class="who">you</span><span class="text"></span>';
  li.querySelector(".text").textContent = text;
  $("transcript").append(li);
  S.dialect.text(text);
}

function askSwitch() {
  if (!S || !S.ready) return;
  const target = S.provider === "openai" ? "gemini" : "openai";
  S.switchAskedAt = performance.now();
  S.dialect.switchTo(target, $("switchWhen").value);
  timeline("switch", `switch to ${target} requested`);
}

function switched({ from, to, reason, gapMs }) {
  const target = String(to || "").toLowerCase();
  if (!target) return;
  const changed = target !== S.provider;
  const parts = [`${from ? String(from).toLowerCase() : S.provider} → ${target}`];
  if (reason) parts.push(`reason ${reason}`);
  if (gapMs !== undefined && gapMs !== null) parts.push(`gap ${gapMs} ms`);
  if (S.switchAskedAt) parts.push(`${Math.round(performance.now() - S.switchAskedAt)} ms after the request`);
  if (changed) {
    stats.switches += 1;
    setProvider(target);
  }
  timeline("switch", `switched ${parts.join(", ")}`, { from, to: target, reason, gapMs });
  if (reason !== undefined) S.switchAskedAt = 0;
}

// session.created/updated name the provider serving the session in session.rs (when the gateway says so).
function servedBy(session) {
  const provider = session && session.rs && session.rs.provider;
  if (provider) setProvider(String(provider).toLowerCase());
}

// The seed's {"type": "switch", "name": "GEMINI"}: the provider changed; rs.switched follows with the details.
function seedSwitch(name) {
  const target = String(name || "").toLowerCase();
  if (!target || target === S.provider) return;
  stats.switches += 1;
  setProvider(target);
  timeline("notice", `provider is now ${target}`);
}

function notice(kind, body) {
  timeline("notice", `${kind} ${JSON.stringify(body)}`);
}

// Gemini clients that asked for notices get a top-level rs* message; its exact shape is not fixed yet, so read the
// provider it names from any of the usual spellings and show the rest as is.
function geminiNotice(key, body) {
  const b = body && typeof body === "object" ? body : {};
  const to = b.to ?? b.toProvider ?? b.to_provider ?? b.provider ?? b.name;
  if (to) {
    switched({ from: b.from ?? b.fromProvider ?? b.from_provider, to, reason: b.reason, gapMs: b.gapMs ?? b.gap_ms });
  } else notice(key, body);
}

function gatewayError(error) {
  stats.errors += 1;
  timeline("error", `error ${error.code || error.type || ""}: ${error.message || ""}`);
}

// ---------------------------------------------------------------------------------------------------------------
// UI

function setStatus(status) {
  const el = $("status");
  el.textContent = status;
  el.className = `badge ${status}`;
}

function setProvider(provider) {
  if (S) S.provider = provider;
  $("provider").textContent = provider;
}

function setButtons(running) {
  const live = running && S && S.ready;
  $("start").disabled = running;
  $("stop").disabled = !running;
  for (const id of ["switch", "text", "send"]) $(id).disabled = !live;
  if (!running) $("mute").disabled = true;
  for (const id of ["account", "session", "dialect", "providerSelect", "secret", "token", "tokenExp"]) $(id).disabled = running;
}

function timeline(kind, text, data = {}) {
  const li = document.createElement("li");
  li.className = kind;
  li.dataset.kind = kind;
  const time = document.createElement("time");
  time.textContent = new Date().toLocaleTimeString();
  const span = document.createElement("span");
  span.textContent = text;
  li.append(time, span);
  $("timeline").append(li);
  li.scrollIntoView({ block: "nearest" });
  window.rsLog.push({ t: performance.now(), dir: "timeline", type: kind, text, data });
}

const AUDIO_TYPES = /(\.audio\.delta|output_audio\.delta|input_audio_buffer\.append|inlineData|realtimeInput\.audio|serverContent\.modelTurn)$/;

function summary(body) {
  if (typeof body === "string") return body;
  return JSON.stringify(body, (k, v) => (typeof v === "string" && v.length > 80 ? `${v.slice(0, 24)}…(${v.length})` : v));
}

function log(dir, type, body) {
  const audio = AUDIO_TYPES.test(type);
  window.rsLog.push({ t: performance.now(), dir, type });
  if (window.rsLog.length > 20000) window.rsLog.splice(0, 10000);
  if (audio && !$("logAudio").checked) return;
  const li = document.createElement("li");
  li.className = dir;
  li.dataset.type = type;
  li.innerHTML = '<span class="dir"></span><span class="type"></span><span class="body"></span>';
  li.querySelector(".dir").textContent = { sent: "→", recv: "←", local: "•" }[dir];
  li.querySelector(".type").textContent = type;
  li.querySelector(".body").textContent = summary(body);
  li.hidden = !matchesFilter(type);
  const list = $("log");
  list.append(li);
  while (list.childElementCount > LOG_LIMIT) list.firstElementChild.remove();
  if (!li.hidden) li.scrollIntoView({ block: "nearest" });
}

function matchesFilter(type) {
  const f = $("logFilter").value.trim().toLowerCase();
  return !f || type.toLowerCase().includes(f);
}

function applyFilter() {
  for (const li of $("log").children) li.hidden = !matchesFilter(li.dataset.type);
}

function wire() {
  $("session").value = `web-${Math.random().toString(36).slice(2, 10)}`;
  const loopback = ["127.0.0.1", "localhost", "[::1]"].includes(location.hostname);
  document.querySelector(`input[name="authMode"][value="${loopback ? "dev" : "token"}"]`).checked = true;
  for (const el of document.querySelectorAll('input[name="authMode"]')) el.addEventListener("change", showAuthMode);
  $("account").addEventListener("change", showAuthMode);
  showAuthMode();
  $("sessionForm").addEventListener("submit", (e) => {
    e.preventDefault();
    start().catch((err) => {
      timeline("error", `start failed: ${err.message || err}`);
      teardown("idle");
    });
  });
  $("stop").addEventListener("click", stop);
  $("mute").addEventListener("click", () => {
    const muted = $("mute").textContent === "Mute mic";
    if (S && S.capture) S.capture.port.postMessage({ type: "mute", muted });
    $("mute").textContent = muted ? "Unmute mic" : "Mute mic";
  });
  $("switch").addEventListener("click", askSwitch);
  $("textForm").addEventListener("submit", (e) => {
    e.preventDefault();
    typed($("text").value.trim());
    $("text").value = "";
  });
  $("logFilter").addEventListener("input", applyFilter);
  $("logClear").addEventListener("click", () => $("log").replaceChildren());
  setButtons(false);
}

wire();
