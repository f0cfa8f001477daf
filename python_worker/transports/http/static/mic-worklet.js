// The audio thread's half of the microphone source (microphone.js): collects the input's 128-sample render
// quanta, mixed down to mono, into frames of FRAME samples and posts each to the page's thread, transferring
// its buffer (no copy). A frame of 1024 samples is about 21-23 ms of audio: few messages, little latency.

const FRAME = 1024;

class KraitCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.frame = new Float32Array(FRAME);
    this.fill = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true; // no input connected yet (or any more)
    const n = channels[0].length;
    for (let i = 0; i < n; i++) {
      let sum = 0;
      for (const channel of channels) sum += channel[i];
      this.frame[this.fill++] = sum / channels.length;
      if (this.fill === FRAME) {
        this.port.postMessage(this.frame, [this.frame.buffer]);
        this.frame = new Float32Array(FRAME);
        this.fill = 0;
      }
    }
    return true;
  }
}

registerProcessor("krait-capture", KraitCapture);
