// AudioWorklet processors: microphone capture (resampled to the dialect's rate, PCM16 chunks) and playback through a
// jitter buffer that can be emptied at once on interruption. They run on the audio thread; the page talks to them
// through their ports.
import { Resampler, floatToPcm16, pcm16ToFloat, rms } from "/web/audio-core.js";

const CHUNK_MS = 40; // one input_audio_buffer.append / realtimeInput.audio per 40 ms: 25 frames a second

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.rate = options.processorOptions.rate;
    this.resampler = new Resampler(sampleRate, this.rate);
    this.chunk = new Float32Array((this.rate * CHUNK_MS) / 1000);
    this.filled = 0;
    this.peakRms = 0; // loudest 128-sample block in this chunk: what the page's level meter and voice clock use
    this.muted = false;
    this.port.onmessage = (e) => {
      if (e.data.type === "mute") this.muted = e.data.muted;
    };
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    const block = this.muted ? new Float32Array(channel.length) : channel;
    this.peakRms = Math.max(this.peakRms, rms(block));
    const resampled = this.resampler.process(block);
    let offset = 0;
    while (offset < resampled.length) {
      const take = Math.min(resampled.length - offset, this.chunk.length - this.filled);
      this.chunk.set(resampled.subarray(offset, offset + take), this.filled);
      this.filled += take;
      offset += take;
      if (this.filled === this.chunk.length) {
        const pcm = floatToPcm16(this.chunk);
        this.port.postMessage({ type: "chunk", pcm, rms: this.peakRms }, [pcm.buffer]);
        this.filled = 0;
        this.peakRms = 0;
      }
    }
    return true;
  }
}

// Jitter buffer: holds decoded chunks, starts playing once PREBUFFER_MS are queued (or the answer is complete), goes
// back to buffering on an underrun, and drops everything on "flush" (barge-in) and says how much of the interrupted
// item was heard, for conversation.item.truncate.
const PREBUFFER_MS = 80;
const STATS_EVERY_MS = 50;

class PlayerProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.inRate = options.processorOptions.rate;
    this.resampler = new Resampler(this.inRate, sampleRate);
    this.queue = []; // {data: Float32Array at sampleRate, offset, tag}
    this.queued = 0; // output samples waiting
    this.playing = false;
    this.complete = false; // the answer is fully received: play out whatever is left
    this.played = 0; // output samples played, all time
    this.playedByTag = new Map(); // tag -> output samples played
    this.underruns = 0;
    this.lastStats = 0;
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(msg) {
    if (msg.type === "push") {
      const data = this.resampler.process(pcm16ToFloat(msg.pcm));
      if (data.length) {
        this.queue.push({ data, offset: 0, tag: msg.tag });
        this.queued += data.length;
      }
      this.complete = false;
    } else if (msg.type === "complete") {
      this.complete = true;
    } else if (msg.type === "flush") {
      const head = this.queue[0];
      const tag = msg.tag ?? (head ? head.tag : null); // the page names the item it is cutting, if it knows it
      const heardMs = tag === null ? 0 : ((this.playedByTag.get(tag) || 0) * 1000) / sampleRate;
      this.queue = [];
      this.queued = 0;
      this.playing = false;
      this.resampler.reset();
      this.port.postMessage({ type: "flushed", tag, heardMs });
      this.postStats();
    }
  }

  postStats() {
    this.port.postMessage({
      type: "stats",
      // in the stream's own rate (24 kHz): what rsStats.playedSamples counts
      playedSamples: Math.round((this.played * this.inRate) / sampleRate),
      bufferedMs: (this.queued * 1000) / sampleRate,
      underruns: this.underruns,
      playing: this.playing,
    });
  }

  process(_inputs, outputs) {
    const out = outputs[0];
    const frames = out[0].length;
    if (!this.playing && this.queued > 0 && (this.queued >= (PREBUFFER_MS * sampleRate) / 1000 || this.complete)) {
      this.playing = true;
    }
    let written = 0;
    while (this.playing && written < frames && this.queue.length) {
      const head = this.queue[0];
      const take = Math.min(frames - written, head.data.length - head.offset);
      for (let c = 0; c < out.length; c++) out[c].set(head.data.subarray(head.offset, head.offset + take), written);
      head.offset += take;
      written += take;
      this.queued -= take;
      this.played += take;
      this.playedByTag.set(head.tag, (this.playedByTag.get(head.tag) || 0) + take);
      if (head.offset === head.data.length) this.queue.shift();
    }
    if (this.playing && this.queue.length === 0) {
      this.playing = false;
      if (!this.complete) this.underruns += 1; // ran dry mid-answer: buffer again before resuming
    }
    if ((currentTime - this.lastStats) * 1000 >= STATS_EVERY_MS) {
      this.lastStats = currentTime;
      this.postStats();
    }
    return true;
  }
}

registerProcessor("rs-capture", CaptureProcessor);
registerProcessor("rs-player", PlayerProcessor);
