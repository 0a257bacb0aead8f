// Browser voice client for the pipecat-vibevoice bot.
//
// Mic (echo cancellation on) → 20 ms 16 kHz frames → WS /ws (Pipecat protobuf).
// Bot audio (24 kHz) → a player worklet with a small jitter buffer that pauses on
// `playback-pause`, resumes on `playback-resume` and drops everything on an
// `interruption` frame or `playback-flush`. Transcripts both ways come from RTVI
// messages; the latency of each turn is measured here, as the user hears it: from
// the last voiced mic frame to the first audible bot sound.
//
// Tests read `window.vvState` (see docs/bot.md).

import { decodeFrame, encodeAudio, encodeInterruption } from "./protocol.js";
import { PlaybackMeter } from "./playback-meter.js";

const MIC_RATE = 16000;
const PLAY_RATE = 24000;
const VOICE_RMS = 500; // int16 units: mic frames above this count as the user speaking
const PAUSE_FAILSAFE_MS = 2000; // a pause never lasts longer than this

const state = {
  connected: false,
  micFramesSent: 0,
  micVoiceFrames: 0,
  lastVoiceAt: null,
  audioChunksReceived: 0,
  interruptions: [],
  pauses: [],
  resumes: [],
  flushes: [],
  playback: { playing: false, paused: false, rms: 0, queuedMs: 0, lastAudibleAt: null, audibleMs: 0 },
  meter: [],
  transcript: [],
  turns: [],
  errors: [],
};
window.vvState = state;

let ws = null;
let micCtx = null;
let playCtx = null;
let micStream = null;
let player = null;
let pauseTimer = null;

const $ = (id) => document.getElementById(id);
const meter = new PlaybackMeter(state, $);

function setStatus(text) {
  $("status").textContent = text;
}

function logLine(role, text, final = true) {
  const list = $("transcript");
  let row = role === "user" && list.lastElementChild && list.lastElementChild.dataset.interim === "1"
    ? list.lastElementChild : null;
  if (!row) {
    row = document.createElement("li");
    row.className = role;
    list.appendChild(row);
  }
  row.dataset.interim = final ? "0" : "1";
  row.classList.toggle("interim", !final);
  row.textContent = (role === "user" ? "You: " : "Bot: ") + text;
  list.scrollTop = list.scrollHeight;
  state.transcript.push({ role, text, final, t: performance.now() });
}

function showError(text) {
  state.errors.push(text);
  $("errors").textContent = text;
}

function pcmToFloat(pcm, fromRate) {
  let samples = new Float32Array(pcm.length);
  for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 32768;
  if (fromRate && fromRate !== PLAY_RATE) { // rare: linear resampling
    const n = Math.round((samples.length * PLAY_RATE) / fromRate);
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const x = (i * fromRate) / PLAY_RATE;
      const j = Math.floor(x);
      const f = x - j;
      out[i] = (samples[j] || 0) * (1 - f) + (samples[j + 1] || 0) * f;
    }
    samples = out;
  }
  return samples;
}

function playerCommand(type) {
  if (!player) return;
  player.port.postMessage({ type });
  const now = performance.now();
  if (type === "pause") {
    state.pauses.push(now);
    clearTimeout(pauseTimer);
    pauseTimer = setTimeout(() => playerCommand("resume"), PAUSE_FAILSAFE_MS);
  } else {
    clearTimeout(pauseTimer);
    if (type === "resume") state.resumes.push(now);
    if (type === "flush") state.flushes.push(now);
  }
}

function onMessage(msg) {
  if (!msg || typeof msg !== "object") return;
  const data = msg.data || {};
  // Our own messages are RTVI server-messages; data.type says which.
  const kind = msg.type === "server-message" ? data.type : msg.type;
  switch (kind) {
    case "playback-pause": playerCommand("pause"); break;
    case "playback-resume": playerCommand("resume"); break;
    case "playback-flush": playerCommand("flush"); break;
    case "error": showError(`server: ${data.error}`); break;
    case "user-transcription":
      logLine("user", data.text || "", !!data.final);
      if (data.final) meter.userTurnEnded(state.lastVoiceAt ?? performance.now());
      break;
    case "bot-output":
      if (data.text && data.aggregated_by !== "word") logLine("bot", data.text);
      break;
    case "bot-started-speaking": setStatus("bot speaking"); break;
    case "bot-stopped-speaking": setStatus("listening"); break;
    default: break;
  }
}

function onSocketMessage(event) {
  let frame;
  try {
    frame = decodeFrame(event.data);
  } catch (err) {
    showError(`bad frame from server: ${err.message}`);
    return;
  }
  if (frame.type === "audio") {
    state.audioChunksReceived += 1;
    const samples = pcmToFloat(frame.pcm, frame.sampleRate);
    player.port.postMessage({ type: "audio", samples }, [samples.buffer]);
  } else if (frame.type === "interruption") {
    state.interruptions.push(performance.now());
    playerCommand("flush");
  } else if (frame.type === "message") {
    onMessage(frame.message);
  }
}

async function connect() {
  if (ws) return;
  $("connect").disabled = true;
  setStatus("starting audio…");
  try {
    micStream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
    });
    micCtx = new AudioContext();
    playCtx = new AudioContext({ sampleRate: PLAY_RATE });
    const moduleUrl = "/static/audio-worklets.js";
    await Promise.all([micCtx.audioWorklet.addModule(moduleUrl), playCtx.audioWorklet.addModule(moduleUrl)]);
    player = new AudioWorkletNode(playCtx, "vv-player", { processorOptions: { jitterMs: 60 } });
    player.port.onmessage = (e) => meter.report(e.data);
    player.connect(playCtx.destination);
    await Promise.all([micCtx.resume(), playCtx.resume()]);

    const proto = location.protocol === "https:" ? "wss" : "ws";
    // A server started with a token wants it on the socket; browsers cannot set
    // headers there, so the page passes on the ?token= it was opened with.
    const token = new URLSearchParams(location.search).get("token");
    const query = token ? `?token=${encodeURIComponent(token)}` : "";
    ws = new WebSocket(`${proto}://${location.host}/ws${query}`);
    ws.binaryType = "arraybuffer";
    ws.onmessage = onSocketMessage;
    ws.onclose = (e) => { state.connected = false; setStatus(`disconnected (${e.code})`); teardown(); };
    ws.onerror = () => showError("websocket error");
    await new Promise((resolve, reject) => { ws.onopen = resolve; setTimeout(() => reject(new Error("connect timeout")), 10000); });
    state.connected = true;

    const capture = new AudioWorkletNode(micCtx, "vv-capture");
    capture.port.onmessage = (e) => {
      if (!ws || ws.readyState !== WebSocket.OPEN) return;
      ws.send(encodeAudio(e.data.pcm, MIC_RATE));
      state.micFramesSent += 1;
      if (e.data.rms >= VOICE_RMS) { state.micVoiceFrames += 1; state.lastVoiceAt = performance.now(); }
    };
    micCtx.createMediaStreamSource(micStream).connect(capture);
    setStatus("listening");
    $("disconnect").disabled = false;
    $("stop").disabled = false;
  } catch (err) {
    showError(`could not start: ${err.message}`);
    setStatus("idle");
    teardown();
  }
}

function teardown() {
  if (ws && ws.readyState <= WebSocket.OPEN) ws.close();
  ws = null;
  if (micStream) micStream.getTracks().forEach((t) => t.stop());
  micStream = null;
  for (const ctx of [micCtx, playCtx]) if (ctx) ctx.close();
  micCtx = playCtx = player = null;
  $("connect").disabled = false;
  $("disconnect").disabled = true;
  $("stop").disabled = true;
}

window.addEventListener("DOMContentLoaded", () => {
  $("connect").onclick = connect;
  $("disconnect").onclick = teardown;
  $("stop").onclick = () => {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(encodeInterruption());
    playerCommand("flush");
  };
  if (new URLSearchParams(location.search).has("autoconnect")) connect();
});
