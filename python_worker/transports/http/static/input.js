// A run's input stream, sent within the credit the worker grants (docs/http.md: the call frame says "input":
// true, the worker's "credit" events say how many items and bytes the page may send; the page never sends more).
//
// - InputFeed: live frames from a source with listen() (the Microphone), each one binary float32 input item. A run
//   whose worker falls behind does not hold back the others nor grow without bound: it keeps at most MAX_QUEUED_S
//   of audio and drops the oldest beyond it, counting them (data-input-dropped), as a live device does.
// - ItemsFeed: a finite list of JSON items (a form's "input" field), then the input's end.
// Both: attach(call, node) when the call starts, credit(items, bytes), end() (the user stops: the input ends and
// the tool finishes), detach() (the call ended).

const MAX_QUEUED_S = 2.0;

/** Live float32 frames from `source` (listen(fn) -> unlisten, sampleRate). */
export class InputFeed {
  constructor(source) {
    this.source = source;
    this.queue = [];
    this.queued = 0; // samples
    this.items = 0; // credit
    this.bytes = 0;
    this.sent = 0;
    this.dropped = 0;
    this.call = null;
    this.unlisten = null;
    this.node = null; // the run's panel: data-input-sent / data-input-dropped
  }

  /** Start sending on `call` (the socket's call handle: sendArray, endInput). */
  attach(call, node) {
    this.call = call;
    this.node = node;
    this.unlisten = this.source.listen((frame) => this.push(frame));
  }

  credit(items, bytes) {
    this.items += items;
    this.bytes += bytes;
    this.flush();
  }

  push(frame) {
    this.queue.push(frame);
    this.queued += frame.length;
    const limit = MAX_QUEUED_S * (this.source.sampleRate || 48000);
    while (this.queued > limit && this.queue.length > 1) {
      this.queued -= this.queue.shift().length;
      this.dropped++;
    }
    this.flush();
  }

  flush() {
    if (!this.call) return;
    while (this.queue.length && this.items > 0 && this.bytes > 0) {
      const frame = this.queue.shift();
      this.queued -= frame.length;
      if (!this.call.sendArray(frame)) return this.detach();
      this.items -= 1;
      this.bytes -= frame.byteLength;
      this.sent += 1;
    }
    if (this.node) {
      this.node.dataset.inputSent = String(this.sent);
      this.node.dataset.inputDropped = String(this.dropped);
    }
  }

  /** The input is over (the user stopped): the tool reads its end and finishes. */
  end() {
    const call = this.call;
    this.detach();
    call?.endInput();
  }

  /** Stop listening (the call ended; a call refused before it listened releases the source too). */
  detach() {
    if (this.unlisten) this.unlisten();
    else this.source.releaseIfIdle?.();
    this.unlisten = null;
    this.call = null;
    this.queue = [];
    this.queued = 0;
  }
}

/** A finite list of JSON items, sent in frames of up to FRAME_ITEMS within the credit, then the input's end. */
export class ItemsFeed {
  static FRAME_ITEMS = 256;

  constructor(items) {
    this.items = [...items];
    this.creditItems = 0;
    this.creditBytes = 0;
    this.sent = 0;
    this.call = null;
    this.node = null;
  }

  attach(call, node) {
    this.call = call;
    this.node = node;
    this.flush();
  }

  credit(items, bytes) {
    this.creditItems += items;
    this.creditBytes += bytes;
    this.flush();
  }

  flush() {
    if (!this.call) return;
    while (this.items.length && this.creditItems > 0 && this.creditBytes > 0) {
      const batch = [];
      let bytes = 0;
      while (this.items.length && batch.length < Math.min(this.creditItems, ItemsFeed.FRAME_ITEMS) && bytes < this.creditBytes) {
        const item = this.items.shift();
        bytes += new TextEncoder().encode(JSON.stringify(item)).length; // the last item may overshoot, as allowed
        batch.push(item);
      }
      const cost = this.call.sendItems(batch); // the whole frame's UTF-8 length: what the worker counts
      if (cost === false) return this.detach();
      this.creditItems -= batch.length;
      this.creditBytes -= cost;
      this.sent += batch.length;
    }
    if (this.node) this.node.dataset.inputSent = String(this.sent);
    if (!this.items.length) this.end();
  }

  end() {
    const call = this.call;
    this.detach();
    call?.endInput();
  }

  detach() {
    this.call = null;
  }
}
