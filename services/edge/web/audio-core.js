// Pure audio helpers shared by the page and its AudioWorklet processors: no DOM, no I/O, no clock.

// Windowed-sinc low-pass, `taps` long, cutoff `fc` in cycles per input sample (0 .. 0.5), unity DC gain.
export function lowpass(taps, fc) {
  const h = new Float32Array(taps);
  const m = (taps - 1) / 2;
  let sum = 0;
  for (let j = 0; j < taps; j++) {
    const x = j - m;
    const sinc = x === 0 ? 2 * fc : Math.sin(2 * Math.PI * fc * x) / (Math.PI * x);
    const hamming = 0.54 - 0.46 * Math.cos((2 * Math.PI * j) / (taps - 1));
    h[j] = sinc * hamming;
    sum += h[j];
  }
  for (let j = 0; j < taps; j++) h[j] /= sum;
  return h;
}

// Streaming sample-rate converter for mono Float32 audio: a low-pass when going down (so 48 kHz speech does not
// alias into 16 kHz), then linear interpolation. Keeps its phase and filter history across calls, so audio can be
// fed in blocks of any size (128-sample render quanta, network chunks) without clicks at the seams.
export class Resampler {
  constructor(fromRate, toRate, taps = 31) {
    this.fromRate = fromRate;
    this.toRate = toRate;
    this.step = fromRate / toRate;
    this.fir = toRate < fromRate ? lowpass(taps, (0.45 * toRate) / fromRate) : null;
    this.history = new Float32Array(this.fir ? taps - 1 : 0);
    this.pos = 0; // where the next output sample falls, in input samples from the start of the next block
    this.prev = 0; // last input sample of the previous block (index -1 of the next one)
  }

  reset() {
    this.history.fill(0);
    this.pos = 0;
    this.prev = 0;
  }

  _filter(input) {
    const h = this.fir;
    const keep = this.history.length;
    const x = new Float32Array(keep + input.length);
    x.set(this.history);
    x.set(input, keep);
    const y = new Float32Array(input.length);
    for (let k = 0; k < input.length; k++) {
      let acc = 0;
      const end = k + keep; // x[end] is input[k]
      for (let j = 0; j < h.length; j++) acc += h[j] * x[end - j];
      y[k] = acc;
    }
    this.history.set(x.subarray(x.length - keep));
    return y;
  }

  process(input) {
    if (input.length === 0) return new Float32Array(0);
    if (this.fromRate === this.toRate) return Float32Array.from(input);
    const x = this.fir ? this._filter(input) : input;
    const n = x.length;
    const out = new Float32Array(Math.max(0, Math.ceil((n - 1 - this.pos) / this.step)) + 1);
    let count = 0;
    let t = this.pos;
    while (t < n - 1) {
      const i = Math.floor(t);
      const a = i < 0 ? this.prev : x[i];
      out[count++] = a + (x[i + 1] - a) * (t - i);
      t += this.step;
    }
    this.pos = t - n;
    this.prev = x[n - 1];
    return out.subarray(0, count);
  }
}

export function floatToPcm16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    out[i] = s < 0 ? Math.round(s * 32768) : Math.round(s * 32767);
  }
  return out;
}

export function pcm16ToFloat(pcm) {
  const out = new Float32Array(pcm.length);
  for (let i = 0; i < pcm.length; i++) out[i] = pcm[i] / 32768;
  return out;
}

export function rms(samples) {
  if (samples.length === 0) return 0;
  let acc = 0;
  for (let i = 0; i < samples.length; i++) acc += samples[i] * samples[i];
  return Math.sqrt(acc / samples.length);
}

// Little-endian PCM16 <-> standard base64 (both dialects send standard base64; we accept URL-safe too).
export function pcm16ToBase64(pcm) {
  const bytes = new Uint8Array(pcm.buffer, pcm.byteOffset, pcm.byteLength);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

export function base64ToPcm16(text) {
  const binary = atob(text.replace(/-/g, "+").replace(/_/g, "/"));
  const even = binary.length & ~1;
  const bytes = new Uint8Array(even);
  for (let i = 0; i < even; i++) bytes[i] = binary.charCodeAt(i);
  return new Int16Array(bytes.buffer);
}
