// Ready-made runs for the tools of the bundled adapters (adapters.dashboard serves them all): one click starts
// a stream that shows each kind of view. Only the presets whose tool the worker has are offered; they run
// when clicked, never on page load (a link must not be able to start tools).

const SWEEP = { kind: "sweep", frequency_hz: 100, end_frequency_hz: 8000, sweep_s: 6, level_dbfs: -12 };
const VOICE = { kind: "sweep", frequency_hz: 110, end_frequency_hz: 880, sweep_s: 6, level_dbfs: -12 };

export const PRESETS = [
  { id: "training", label: "Training run", tool: "train_model", args: { epochs: 40, hidden: 64 }, overflow: "block" },
  {
    id: "spectrum",
    label: "Spectrum of a sweep",
    tool: "stream_spectrum",
    args: { signal: SWEEP, peak_decay_db_s: 30, duration_s: 60 },
  },
  { id: "levels", label: "Level meter", tool: "stream_levels", args: { signal: SWEEP, weighting: "A", duration_s: 60 } },
  { id: "pitch", label: "Pitch", tool: "stream_pitch", args: { signal: VOICE, duration_s: 60 } },
  { id: "spectrogram", label: "Spectrogram", tool: "stream_spectrogram", args: { signal: SWEEP, duration_s: 60 } },
  { id: "progress", label: "Progress", tool: "stream_progress", args: { steps: 100, delay_ms: 100 } },
  {
    id: "instruments",
    label: "Instrument monitor",
    tool: "monitor",
    args: { poll_interval: 0.25, duration_s: 60, seed: 1 },
    overflow: "block",
  },
];

/** The presets whose tool is among `tools` (the worker's listing). */
export const available = (tools) => PRESETS.filter((p) => tools.some((t) => t.name === p.tool && t.streaming));

// The microphone: one capture feeding three runs of analyse_stream (the same views as the generated signals').
// The tuner takes every block (max_rate_hz 0), so a short sound (a click, a beep) is not skipped between chunks.
export const MICROPHONE = {
  id: "microphone",
  label: "Microphone",
  tool: "analyse_stream",
  runs: [
    { analysis: "levels" },
    { analysis: "spectrum", options: { peak_decay_db_s: 30 } },
    { analysis: "pitch", max_rate_hz: 0 },
  ],
};

/** Whether the worker has a tool that analyses the page's microphone. */
export const hasMicrophoneTool = (tools) => tools.some((t) => t.name === MICROPHONE.tool && t.streaming && t.input);
