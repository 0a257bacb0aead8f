// Pipecat's protobuf frames, plus the one the SDK cannot read.
//
// Pipecat 1.14 sends an `interruption` frame (Frame field 5) when the user interrupts
// the bot; websocket-transport 1.7.1 knows fields 1-4 only, logs "Unknown frame kind"
// and drops it, so the page would never learn that the audio it holds is stale. The
// transport takes any serializer (its `serializer` option): this one recognizes field
// 5 itself, tells the page, and hands the transport a "raw" frame, which it ignores.
// It also encodes the interruption the page sends when the user presses "Stop the
// bot" (`transport.sendRawMessage({type: "interruption"})`). Everything else is the
// SDK's ProtobufFrameSerializer.
//
// The transport decodes each socket message in its own async handler; frames are
// decoded one after another here so an interruption can never overtake the audio
// that came before it.

import { ProtobufFrameSerializer } from "@pipecat-ai/websocket-transport";

const INTERRUPTION_FIELD = 5;
const LENGTH_DELIMITED = 2;

/** Whether these bytes are a protobuf `Frame` whose field is `interruption`. */
export function isInterruptionFrame(bytes) {
  // The Frame message is a oneof: its first tag says which frame it is.
  let tag = 0;
  let shift = 0;
  for (let i = 0; i < bytes.length && i < 5; i++) {
    tag |= (bytes[i] & 0x7f) << shift;
    if (!(bytes[i] & 0x80)) return tag >>> 3 === INTERRUPTION_FIELD && (tag & 7) === LENGTH_DELIMITED;
    shift += 7;
  }
  return false;
}

export class VoiceBotSerializer extends ProtobufFrameSerializer {
  /** @param {() => void} onInterruption  called in order with the audio before it */
  constructor(onInterruption) {
    super();
    this._onInterruption = onInterruption;
    this._queue = Promise.resolve();
  }

  serialize(data) {
    if (data && data.type === "interruption") {
      return Uint8Array.from([(INTERRUPTION_FIELD << 3) | LENGTH_DELIMITED, 0]);
    }
    return super.serialize(data);
  }

  deserialize(data) {
    const next = this._queue.then(() => this._decode(data));
    this._queue = next.catch(() => {});
    return next;
  }

  async _decode(data) {
    if (data instanceof Blob) {
      const head = new Uint8Array(await data.slice(0, 5).arrayBuffer());
      if (isInterruptionFrame(head)) {
        this._onInterruption();
        return { type: "raw", message: { type: "interruption" } };
      }
    }
    return super.deserialize(data);
  }
}
