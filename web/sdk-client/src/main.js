// The voice bot's page on Pipecat's official browser SDK (served at /sdk/).
//
// PipecatClient (@pipecat-ai/client-js 1.13) speaks RTVI over the SDK's
// WebSocketTransport (@pipecat-ai/websocket-transport 1.7) to /ws of this server:
// client-ready/bot-ready, transcripts both ways, the bot's audio. Two pieces are ours,
// plugged into the SDK's own extension points (see media.js and serializer.js):
// the media manager (a recorder that streams from connect on, a player that pauses)
// and a serializer that reads Pipecat 1.14's interruption frame.
//
// Barge-in: `playback-pause` (a server-message, sent at the first voiced frames)
// stops the player's output at once; `playback-resume` plays on; `playback-flush` and
// Pipecat's interruption frame drop what is queued. A pause never lasts more than
// 2 s without news. `?media=wav` runs the SDK's stock WavMediaManager and serializer
// instead (for comparison: no pause, no flush, the stream starts at the first
// non-zero sample). `?token=` is passed on to the socket; `?autoconnect=1` connects on
// load; `?debug=1` keeps the SDK's debug log. Tests read `window.sdkState` (docs/bot.md).

import { LogLevel, PipecatClient } from "@pipecat-ai/client-js";
import {
  ProtobufFrameSerializer,
  WavMediaManager,
  WebSocketTransport,
} from "@pipecat-ai/websocket-transport";

import { VoiceBotMediaManager } from "./media.js";
import { VoiceBotSerializer } from "./serializer.js";
import { PlaybackMeter } from "../../../src/pipecat_vibevoice/bot/static/playback-meter.js";

const MIC_RATE = 16000;
const PLAY_RATE = 24000;
const VOICE_RMS = 500; // int16 units: mic frames above this count as the user speaking
const PAUSE_FAILSAFE_MS = 2000; // a pause never lasts longer than this
const WORKLETS = "/static/audio-worklets.js"; // the bot's capture and player processors

const params = new URLSearchParams(location.search);
const stockMedia = params.get("media") === "wav";

const state = {
  media: stockMedia ? "sdk-wav" : "voicebot",
  transportState: "disconnected",
  connected: false,
  botReady: false,
  botReadyAt: null,
  connectStartedAt: null,
  streamStartedAt: null, // first frame sent
  micFramesSent: 0, // 20 ms frames sent, lead-in included
  leadInFrames: 0, // silence the stream starts with (media.js LEAD_IN_MS)
  micVoiceFrames: 0,
  firstVoiceFrame: null, // index of the first voiced frame sent (frames before it: silence)
  lastVoiceAt: null,
  audioChunksReceived: 0,
  interruptions: [],
  pauses: [],
  resumes: [],
  flushes: [],
  userStartedSpeaking: [],
  botStartedSpeaking: [],
  playback: { playing: false, paused: false, rms: 0, queuedMs: 0, lastAudibleAt: null, audibleMs: 0 },
  meter: [],
  transcript: [],
  turns: [],
  errors: [],
};
window.sdkState = state;

let client = null;
let media = null;
let pauseTimer = null;

const $ = (id) => document.getElementById(id);
const meter = new PlaybackMeter(state, $);

function setStatus(text) {
  $("status").textContent = text;
}

function logLine(role, text, final = true, key = null) {
  const list = $("transcript");
  let row = null;
  const last = list.lastElementChild;
  if (last && last.className.startsWith(role)) {
    if (role === "user" && last.dataset.interim === "1") row = last;
    if (role === "bot" && key !== null && last.dataset.key === String(key)) row = last;
  }
  if (row && role === "bot" && row.dataset.text === text) return; // "completed" after "new"
  if (!row) {
    row = document.createElement("li");
    row.className = role;
    list.appendChild(row);
  }
  row.dataset.interim = final ? "0" : "1";
  row.dataset.key = key === null ? "" : String(key);
  row.dataset.text = text;
  row.classList.toggle("interim", !final);
  row.textContent = (role === "user" ? "You: " : "Bot: ") + text;
  list.scrollTop = list.scrollHeight;
  state.transcript.push({ role, text, final, t: performance.now() });
}

function showError(text) {
  state.errors.push(text);
  $("errors").textContent = text;
}

// -- barge-in ---------------------------------------------------------------------

function playerCommand(type) {
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
  if (stockMedia || !media) return; // the SDK's WavMediaManager can neither pause nor flush safely
  media[type]();
}

function onInterruption() {
  state.interruptions.push(performance.now());
  playerCommand("flush");
}

function onServerMessage(data) {
  switch (data && data.type) {
    case "playback-pause": playerCommand("pause"); break;
    case "playback-resume": playerCommand("resume"); break;
    case "playback-flush": playerCommand("flush"); break;
    default: break;
  }
}

// -- what the page hears and says -------------------------------------------------

function onMicFrame({ rms, leadIn }) {
  if (state.streamStartedAt === null) state.streamStartedAt = performance.now();
  state.micFramesSent += 1;
  if (leadIn) state.leadInFrames += 1;
  if (rms >= VOICE_RMS) {
    state.micVoiceFrames += 1;
    state.lastVoiceAt = performance.now();
    if (state.firstVoiceFrame === null) state.firstVoiceFrame = state.micFramesSent - 1;
  }
}

function makeClient() {
  media = stockMedia
    ? new WavMediaManager(512, MIC_RATE)
    : new VoiceBotMediaManager({
      workletUrl: WORKLETS,
      playerSampleRate: PLAY_RATE,
      onPlayerReport: (report) => meter.report(report),
      onMicFrame,
      onBotAudio: () => { state.audioChunksReceived += 1; },
    });
  const transport = new WebSocketTransport({
    serializer: stockMedia ? new ProtobufFrameSerializer() : new VoiceBotSerializer(onInterruption),
    recorderSampleRate: MIC_RATE,
    playerSampleRate: PLAY_RATE,
    mediaManager: media,
  });
  const pipecat = new PipecatClient({
    transport,
    enableMic: true,
    enableCam: false,
    callbacks: {
      onTransportStateChanged: (s) => {
        state.transportState = s;
        state.connected = s === "connected" || s === "ready";
      },
      onBotReady: () => {
        state.botReady = true;
        state.botReadyAt = performance.now();
        setStatus("listening");
      },
      onDisconnected: () => {
        state.connected = false;
        state.botReady = false;
        setStatus("disconnected");
        resetButtons();
      },
      onUserTranscript: (data) => {
        logLine("user", data.text || "", !!data.final);
        if (data.final) meter.userTurnEnded(state.lastVoiceAt ?? performance.now());
      },
      onBotOutput: (data) => {
        if (data.text && data.aggregated_by !== "word") logLine("bot", data.text, true, data.segment_id ?? null);
      },
      onUserStartedSpeaking: () => state.userStartedSpeaking.push(performance.now()),
      onBotStartedSpeaking: () => {
        state.botStartedSpeaking.push(performance.now());
        setStatus("bot speaking");
      },
      onBotStoppedSpeaking: () => setStatus("listening"),
      onServerMessage,
      onError: (message) => {
        const data = message && message.data;
        showError(`server: ${(data && (data.error || data.message)) || JSON.stringify(message)}`);
      },
    },
  });
  // The SDK logs every RTVI message at DEBUG; `?debug=1` keeps that.
  pipecat.setLogLevel(params.has("debug") ? LogLevel.DEBUG : LogLevel.WARN);
  return pipecat;
}

async function connect() {
  if (client) return;
  $("connect").disabled = true;
  setStatus("connecting…");
  state.connectStartedAt = performance.now();
  client = makeClient();
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const connectParams = { wsUrl: `${proto}://${location.host}/ws` };
  // A server started with a token wants it on the socket; browsers cannot set
  // headers there, so the page passes on the ?token= it was opened with.
  const token = params.get("token");
  if (token) connectParams.token = token;
  try {
    await client.connect(connectParams);
    $("disconnect").disabled = false;
    $("stop").disabled = false;
  } catch (err) {
    showError(`could not start: ${err.message || err}`);
    setStatus("idle");
    await disconnect();
  }
}

function resetButtons() {
  $("connect").disabled = !!client && client.connected;
  $("disconnect").disabled = !client;
  $("stop").disabled = !client;
}

async function disconnect() {
  const c = client;
  client = null;
  media = null;
  if (c) {
    try {
      await c.disconnect();
    } catch (err) {
      showError(`disconnect: ${err.message || err}`);
    }
  }
  state.connected = false;
  resetButtons();
  $("connect").disabled = false;
}

window.addEventListener("DOMContentLoaded", () => {
  $("connect").onclick = connect;
  $("disconnect").onclick = disconnect;
  $("stop").onclick = () => {
    // Pipecat's interruption frame, as our own page sends it (not in stock mode: the
    // SDK's serializer cannot encode it).
    if (client && !stockMedia) client.transport.sendRawMessage({ type: "interruption" });
    playerCommand("flush");
  };
  $("mode").textContent = stockMedia ? "SDK WavMediaManager (comparison)" : "SDK + bot media manager";
  if (params.has("autoconnect")) connect();
});
