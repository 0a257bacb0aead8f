// AudioWorklet processors of the voice client.
//
// "vv-capture": microphone → 20 ms frames of 16 kHz Int16 PCM (+ their RMS).
// "vv-player":  queued bot audio → speakers at real time, with a small jitter buffer,
//               pause/resume/flush on command, and a meter of what is really played.

const TARGET_RATE = 16000;
const FRAME = 320; // 20 ms at 16 kHz

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.ratio = sampleRate / TARGET_RATE;
    this.pos = 0; // fractional read position into `this.input`
    this.input = new Float32Array(0);
    this.frame = new Int16Array(FRAME);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    const merged = new Float32Array(this.input.length + channel.length);
    merged.set(this.input);
    merged.set(channel, this.input.length);
    // Box-filter decimation: average the input samples that map to each output one.
    const half = this.ratio / 2;
    while (this.pos + half < merged.length) {
      const lo = Math.max(0, Math.floor(this.pos - half));
      const hi = Math.min(merged.length, Math.ceil(this.pos + half));
      let acc = 0;
      for (let i = lo; i < hi; i++) acc += merged[i];
      const s = Math.max(-1, Math.min(1, acc / Math.max(1, hi - lo)));
      this.frame[this.filled++] = s < 0 ? s * 0x8000 : s * 0x7fff;
      if (this.filled === FRAME) {
        let sq = 0;
        for (let i = 0; i < FRAME; i++) sq += this.frame[i] * this.frame[i];
        this.port.postMessage({ pcm: this.frame.slice(), rms: Math.sqrt(sq / FRAME) });
        this.filled = 0;
      }
      this.pos += this.ratio;
    }
    const keep = Math.max(0, Math.floor(this.pos - half));
    this.input = merged.slice(keep);
    this.pos -= keep;
    return true;
  }
}

class PlayerProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.jitter = Math.round(((opts.jitterMs ?? 60) / 1000) * sampleRate);
    this.queue = []; // Float32Array chunks
    this.offset = 0; // read offset into queue[0]
    this.queued = 0; // samples queued
    this.playing = false;
    this.paused = false;
    this.waitingSince = null; // currentFrame when audio arrived into an idle player
    this.meterSq = 0;
    this.meterN = 0;
    this.port.onmessage = (e) => this.command(e.data);
  }

  command(msg) {
    if (msg.type === "audio") {
      this.queue.push(msg.samples);
      this.queued += msg.samples.length;
      if (!this.playing && this.waitingSince === null) this.waitingSince = currentFrame;
    } else if (msg.type === "pause") {
      this.paused = true;
    } else if (msg.type === "resume") {
      this.paused = false;
    } else if (msg.type === "flush") {
      this.queue = []; this.offset = 0; this.queued = 0;
      this.playing = false; this.paused = false; this.waitingSince = null;
    }
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    out.fill(0);
    if (!this.playing && this.queued > 0 && !this.paused) {
      // Start once the jitter buffer is full or has waited as long as it holds.
      const waited = this.waitingSince === null ? 0 : currentFrame - this.waitingSince;
      if (this.queued >= this.jitter || waited >= this.jitter) {
        this.playing = true; this.waitingSince = null;
      }
    }
    if (this.playing && !this.paused) {
      let i = 0;
      while (i < out.length && this.queue.length) {
        const chunk = this.queue[0];
        const n = Math.min(out.length - i, chunk.length - this.offset);
        out.set(chunk.subarray(this.offset, this.offset + n), i);
        i += n; this.offset += n; this.queued -= n;
        if (this.offset >= chunk.length) { this.queue.shift(); this.offset = 0; }
      }
      if (!this.queue.length) this.playing = false; // ran dry: refill the jitter buffer
    }
    for (let i = 0; i < out.length; i++) this.meterSq += out[i] * out[i];
    this.meterN += out.length;
    if (this.meterN >= sampleRate / 100) { // report every ~10 ms
      this.port.postMessage({
        rms: Math.sqrt(this.meterSq / this.meterN),
        playing: this.playing && !this.paused,
        paused: this.paused,
        queuedMs: (this.queued / sampleRate) * 1000,
      });
      this.meterSq = 0; this.meterN = 0;
    }
    return true;
  }
}

registerProcessor("vv-capture", CaptureProcessor);
registerProcessor("vv-player", PlayerProcessor);
