// What both browser pages (ours at /, the Pipecat SDK page at /sdk/) record of the
// bot's playback: the player's 10 ms reports become the page state tests and benches
// read (level meter, last audible moment) and each turn's voice-to-voice latency.

export const AUDIBLE_RMS = 0.01; // float units: player output above this is audible

export class PlaybackMeter {
  // state: the page's exported state object (state.playback, state.turns, state.meter);
  // byId: the page's element lookup (its #latency list and #level meter).
  constructor(state, byId) {
    this.state = state;
    this.byId = byId;
    this.pendingTurn = null; // {userEnd} once the user's final transcript arrived
  }

  // The user's final transcript: the next audible sound ends this turn's wait.
  userTurnEnded(userEnd) {
    this.pendingTurn = { userEnd };
  }

  report(report) {
    const now = performance.now();
    const p = this.state.playback;
    p.playing = report.playing;
    p.paused = report.paused;
    p.rms = report.rms;
    p.queuedMs = report.queuedMs;
    if (report.rms >= AUDIBLE_RMS) {
      p.lastAudibleAt = now;
      p.audibleMs += 10;
      if (this.pendingTurn) {
        const latency = Math.round(now - this.pendingTurn.userEnd);
        this.state.turns.push({ latencyMs: latency, t: now });
        this.pendingTurn = null;
        const li = document.createElement("li");
        li.textContent = `turn ${this.state.turns.length}: ${latency} ms`;
        this.byId("latency").appendChild(li);
      }
    }
    this.state.meter.push([Math.round(now), Math.round(report.rms * 10000) / 10000]);
    if (this.state.meter.length > 6000) this.state.meter.splice(0, 1000);
    this.byId("level").value = Math.min(1, report.rms * 8);
  }
}
