// The browser's microphone as a source of PCM frames: getUserMedia -> an AudioWorklet (mic-worklet.js) collecting
// float32 frames -> every listener (an InputFeed of input.js sends them to a run's tool, e.g. analyse_stream).
//
// One capture serves every run that listens (the level meter, the spectrum and the tuner of one click share it)
// and stops, releasing the device, when the last one ends. Audio processing is off (no echo cancellation, noise
// suppression or gain control): the analysis sees what the microphone hears. body[data-microphone] is on | off.

export class Microphone {
  constructor() {
    this.listeners = new Set();
    this.context = null;
    this.stream = null;
    this.starting = null;
    this.sampleRate = 0;
  }

  /** Open the microphone (asks the user, once); resolves when frames are flowing. */
  async start() {
    if (this.context) return;
    if (this.starting) return this.starting;
    this.starting = (async () => {
      if (!navigator.mediaDevices?.getUserMedia) throw new Error("this browser offers no microphone here (a page over https or on localhost can)");
      const stream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
      const context = new AudioContext();
      try {
        await context.audioWorklet.addModule("/static/mic-worklet.js");
        const node = new AudioWorkletNode(context, "krait-capture", { numberOfOutputs: 1 });
        node.port.onmessage = (event) => this.emit(event.data);
        const mute = context.createGain();
        mute.gain.value = 0; // pulled by the destination, heard by nobody
        context.createMediaStreamSource(stream).connect(node).connect(mute).connect(context.destination);
        await context.resume();
      } catch (err) {
        stream.getTracks().forEach((t) => t.stop());
        context.close();
        throw err;
      }
      this.stream = stream;
      this.context = context;
      this.sampleRate = context.sampleRate;
      document.body.dataset.microphone = "on";
    })();
    try {
      await this.starting;
    } finally {
      this.starting = null;
    }
  }

  emit(frame) {
    for (const listener of this.listeners) listener(frame);
  }

  /** Call `listener(Float32Array)` with every frame; returns the function that stops listening. */
  listen(listener) {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
      this.releaseIfIdle();
    };
  }

  /** Stop capturing when nobody listens (the last run ended, or a run ended before it ever listened). */
  releaseIfIdle() {
    if (this.listeners.size === 0) this.stop();
  }

  stop() {
    if (!this.context) return;
    this.stream.getTracks().forEach((t) => t.stop());
    this.context.close();
    this.context = null;
    this.stream = null;
    document.body.dataset.microphone = "off";
  }
}
