// The page's media manager: the SDK's `mediaManager` extension point, filled with the
// bot's own capture and player worklets (`/static/audio-worklets.js`, the same
// processors our own page uses).
//
// Why not the SDK's WavMediaManager as it is (websocket-transport 1.7.1):
// * its recorder sends nothing until the first non-zero sample, so behind a digitally
//   silent microphone the stream starts mid-word, and the bot's VAD does not confirm
//   a first word it hears with no silence before it: "What time is it" reaches the
//   server as "time as it". Here the stream begins with LEAD_IN_MS of silence and then
//   carries every 20 ms frame from the moment the microphone opened (frames captured
//   before the socket is up are kept and sent on connect), silence included;
// * its player (WavStreamPlayer) cannot pause, and its interrupt() marks the track
//   "default" as interrupted for good: every later chunk of the bot would be dropped.
//   Here the player pauses, resumes and flushes on command and meters what it plays.
//
// Subclassing WavMediaManager keeps the SDK's base behaviour (options, callbacks,
// the user-audio callback, cam/screen-share stubs); every method that touches the
// microphone or the speakers is ours. No network access: nothing here loads a script
// from anywhere but this server.

import { WavMediaManager } from "@pipecat-ai/websocket-transport";

const AUDIO_CONSTRAINTS = {
  echoCancellation: true,
  noiseSuppression: true,
  autoGainControl: true,
  channelCount: 1,
};
const FRAME_SAMPLES = 320; // vv-capture: 20 ms at 16 kHz
// Silence sent before the first captured frame: at least the server's 0.5 s pre-roll,
// so speech at the microphone's very first sample still has silence before it.
export const LEAD_IN_MS = 500;
// Frames captured before connect that are kept (older ones are dropped).
const MAX_PENDING_FRAMES = 150; // 3 s

export class VoiceBotMediaManager extends WavMediaManager {
  /**
   * @param {object} opts
   * @param {string} opts.workletUrl  module with the "vv-capture" and "vv-player" processors
   * @param {number} [opts.playerSampleRate]  rate of the bot's audio (24 kHz)
   * @param {number} [opts.jitterMs]  player jitter buffer
   * @param {(report: object) => void} [opts.onPlayerReport]  every ~10 ms of output
   * @param {(frame: {rms: number, leadIn: boolean}) => void} [opts.onMicFrame]  every frame sent
   * @param {() => void} [opts.onBotAudio]  every chunk of the bot's audio received
   */
  constructor(opts) {
    super(undefined, 16000);
    this._workletUrl = opts.workletUrl;
    this._playerRate = opts.playerSampleRate ?? 24000;
    this._jitterMs = opts.jitterMs ?? 60;
    this._onPlayerReport = opts.onPlayerReport ?? (() => {});
    this._onMicFrame = opts.onMicFrame ?? (() => {});
    this._onBotAudio = opts.onBotAudio ?? (() => {});
    this._stream = null;
    this._micCtx = null;
    this._playCtx = null;
    this._player = null;
    this._capture = null;
    this._source = null;
    this._device = null;
    this._pending = []; // frames captured before connect
    this._streaming = false;
    this._initialized = false;
  }

  // -- lifecycle (called by the transport) ------------------------------------------

  async initialize() {
    if (this._initialized) return;
    // Worklets first, so capture is wired the moment the microphone opens.
    this._micCtx = new AudioContext();
    this._playCtx = new AudioContext({ sampleRate: this._playerRate });
    await Promise.all([
      this._micCtx.audioWorklet.addModule(this._workletUrl),
      this._playCtx.audioWorklet.addModule(this._workletUrl),
    ]);
    this._player = new AudioWorkletNode(this._playCtx, "vv-player", {
      processorOptions: { jitterMs: this._jitterMs },
    });
    this._player.port.onmessage = (e) => this._onPlayerReport(e.data);
    this._player.connect(this._playCtx.destination);
    this._capture = new AudioWorkletNode(this._micCtx, "vv-capture");
    this._capture.port.onmessage = (e) => this._onCaptured(e.data);
    await Promise.all([this._micCtx.resume(), this._playCtx.resume()]);
    try {
      this._stream = await navigator.mediaDevices.getUserMedia({ audio: AUDIO_CONSTRAINTS });
    } catch (err) {
      await this.disconnect();
      throw new Error(`could not open the microphone: ${err.message}`);
    }
    this._source = this._micCtx.createMediaStreamSource(this._stream);
    this._source.connect(this._capture);
    const track = this._stream.getAudioTracks()[0];
    track.enabled = this._micEnabled;
    const deviceId = track.getSettings().deviceId;
    const mics = await this.getAllMics();
    this._device = mics.find((d) => d.deviceId === deviceId) ?? mics[0] ?? null;
    if (this._device) this._callbacks.onMicUpdated?.(this._device);
    this._initialized = true;
  }

  async connect() {
    if (!this._initialized) await this.initialize();
    // The stream starts now: silence, then what the microphone heard since it opened.
    const silence = new Int16Array(FRAME_SAMPLES);
    for (let ms = 0; ms < LEAD_IN_MS; ms += 20) this._send(silence.slice(), 0, true);
    for (const { pcm, rms } of this._pending) this._send(pcm, rms, false);
    this._pending = [];
    this._streaming = true;
    const track = this._stream.getAudioTracks()[0];
    if (track) this._callbacks.onTrackStarted?.(track, { id: "local", name: "", local: true });
  }

  async disconnect() {
    this._streaming = false;
    this._pending = [];
    if (this._source) this._source.disconnect();
    if (this._capture) this._capture.port.onmessage = null;
    if (this._stream) this._stream.getTracks().forEach((t) => t.stop());
    for (const ctx of [this._micCtx, this._playCtx]) if (ctx) await ctx.close();
    this._stream = this._micCtx = this._playCtx = this._player = null;
    this._capture = this._source = null;
    this._initialized = false;
  }

  // -- microphone: every frame from the moment it opened, silence included ----------

  _onCaptured({ pcm, rms }) {
    if (this._streaming) {
      this._send(pcm, rms, false);
    } else {
      this._pending.push({ pcm, rms });
      if (this._pending.length > MAX_PENDING_FRAMES) this._pending.shift();
    }
  }

  _send(pcm, rms, leadIn) {
    this._userAudioCallback?.(pcm.buffer);
    this._onMicFrame({ rms, leadIn });
  }

  enableMic(enable) {
    // A disabled track gives zeros: the stream keeps flowing, so the server's timeline
    // stays continuous and the first word after unmuting is not lost either.
    this._micEnabled = enable;
    this._stream?.getAudioTracks().forEach((t) => {
      t.enabled = enable;
    });
  }

  get isMicEnabled() {
    return this._micEnabled;
  }

  async getAllMics() {
    const devices = await navigator.mediaDevices.enumerateDevices();
    return devices.filter((d) => d.kind === "audioinput");
  }

  async updateMic(micId) {
    console.warn(`this page uses the default microphone; ignoring updateMic(${micId})`);
  }

  get selectedMic() {
    return this._device ?? {};
  }

  tracks() {
    const track = this._stream?.getAudioTracks()[0];
    return { local: track ? { audio: track } : {} };
  }

  // -- the bot's audio ------------------------------------------------------------

  bufferBotAudio(data) {
    const pcm = data instanceof Int16Array ? data : new Int16Array(data);
    this._onBotAudio();
    if (!this._player) return pcm;
    const samples = new Float32Array(pcm.length);
    for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 32768;
    this._player.port.postMessage({ type: "audio", samples }, [samples.buffer]);
    return pcm;
  }

  /** Stop the output at once, keeping what is queued. */
  pause() {
    this._player?.port.postMessage({ type: "pause" });
  }

  /** Play on from where the pause stopped. */
  resume() {
    this._player?.port.postMessage({ type: "resume" });
  }

  /** Drop everything queued (and any pause). */
  flush() {
    this._player?.port.postMessage({ type: "flush" });
  }

  async userStartedSpeaking() {
    this.flush();
  }
}
