// Pipecat's protobuf frames (pipecat/frames/protobufs/frames.proto), hand-written.
//
// Frame { oneof frame { TextFrame text = 1; AudioRawFrame audio = 2;
//   TranscriptionFrame transcription = 3; MessageFrame message = 4;
//   InterruptionFrame interruption = 5; } }
// AudioRawFrame { uint64 id = 1; string name = 2; bytes audio = 3;
//   uint32 sample_rate = 4; uint32 num_channels = 5; optional uint64 pts = 6; }
// TextFrame/TranscriptionFrame { uint64 id = 1; string name = 2; string text = 3;
//   string user_id = 4; string timestamp = 5; }   MessageFrame { string data = 1; }
//
// Only what the voice client needs: encode audio, decode everything.

const WIRE_VARINT = 0;
const WIRE_LEN = 2;
const utf8 = new TextDecoder();

function pushVarint(out, value) {
  while (value > 0x7f) {
    out.push((value & 0x7f) | 0x80);
    value = Math.floor(value / 128);
  }
  out.push(value);
}

function readVarint(bytes, pos) {
  let value = 0;
  let scale = 1;
  for (;;) {
    if (pos >= bytes.length) throw new Error("truncated varint");
    const b = bytes[pos++];
    value += (b & 0x7f) * scale;
    if (b < 0x80) return [value, pos];
    scale *= 128;
    if (scale > 2 ** 63) throw new Error("varint too long");
  }
}

// Split one message into {fieldNumber: [values]} (varints as numbers, LEN as Uint8Array).
function readFields(bytes) {
  const fields = {};
  let pos = 0;
  while (pos < bytes.length) {
    let key;
    [key, pos] = readVarint(bytes, pos);
    const field = Math.floor(key / 8);
    const wire = key & 7;
    let value;
    if (wire === WIRE_VARINT) {
      [value, pos] = readVarint(bytes, pos);
    } else if (wire === WIRE_LEN) {
      let len;
      [len, pos] = readVarint(bytes, pos);
      if (pos + len > bytes.length) throw new Error("truncated field");
      value = bytes.subarray(pos, pos + len);
      pos += len;
    } else if (wire === 1) {
      value = bytes.subarray(pos, pos + 8); pos += 8;
    } else if (wire === 5) {
      value = bytes.subarray(pos, pos + 4); pos += 4;
    } else {
      throw new Error("unsupported wire type " + wire);
    }
    (fields[field] ||= []).push(value);
  }
  return fields;
}

const one = (fields, n, fallback) => (fields[n] ? fields[n][fields[n].length - 1] : fallback);
const str = (fields, n) => { const v = one(fields, n, null); return v ? utf8.decode(v) : ""; };

/** Encode 16-bit mono PCM (Int16Array) as a Pipecat audio frame. */
export function encodeAudio(pcm, sampleRate) {
  const payload = new Uint8Array(pcm.buffer, pcm.byteOffset, pcm.byteLength);
  const inner = [];
  inner.push((3 << 3) | WIRE_LEN);
  pushVarint(inner, payload.length);
  const head = Uint8Array.from(inner);
  const tail = [];
  tail.push((4 << 3) | WIRE_VARINT); pushVarint(tail, sampleRate);
  tail.push((5 << 3) | WIRE_VARINT); pushVarint(tail, 1);
  const innerLen = head.length + payload.length + tail.length;
  const outer = [(2 << 3) | WIRE_LEN];
  pushVarint(outer, innerLen);
  const msg = new Uint8Array(outer.length + innerLen);
  msg.set(outer, 0);
  msg.set(head, outer.length);
  msg.set(payload, outer.length + head.length);
  msg.set(tail, outer.length + head.length + payload.length);
  return msg;
}

/** Encode an interruption frame (the client's "stop talking" button). */
export function encodeInterruption() {
  return Uint8Array.from([(5 << 3) | WIRE_LEN, 0]);
}

/** Decode one websocket message into {type, ...}. */
export function decodeFrame(buffer) {
  const outer = readFields(new Uint8Array(buffer));
  if (outer[2]) {
    const f = readFields(one(outer, 2));
    const audio = one(f, 3, new Uint8Array());
    // Copy: the Int16Array view needs 2-byte alignment.
    const pcm = new Int16Array(audio.slice().buffer);
    return { type: "audio", pcm, sampleRate: one(f, 4, 0), channels: one(f, 5, 1) };
  }
  if (outer[5]) return { type: "interruption" };
  if (outer[4]) {
    const f = readFields(one(outer, 4));
    return { type: "message", message: JSON.parse(str(f, 1) || "null") };
  }
  if (outer[3]) {
    const f = readFields(one(outer, 3));
    return { type: "transcription", text: str(f, 3), userId: str(f, 4) };
  }
  if (outer[1]) {
    const f = readFields(one(outer, 1));
    return { type: "text", text: str(f, 3) };
  }
  return { type: "unknown" };
}
