// A run's output as a terminal shows it: stdout and stderr told apart, ANSI colours and styles
// rendered. The escape sequences are parsed by anser (src/ui/vendor/anser.js, served as
// /ui/anser.js); its parsed pieces become text nodes in styled spans, so output is always text,
// never markup. Sequences without a visible effect here (cursor moves, titles, mode switches)
// are dropped.

import Anser from './anser.js';

// OSC sequences (window titles, hyperlinks): ESC ] ... BEL or ESC \. anser leaves them in.
const OSC = /\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?/g;
// What is left after anser: charset selections and other two-byte escapes, then any control
// character but tab and newline (a carriage return before a newline included).
const LEFTOVER = /\x1b[()*+][0-9A-Za-z]|\x1b[=>78DEHMc]|[\x00-\x08\x0b-\x1f\x7f]/g;

const DECORATIONS = new Set(['bold', 'dim', 'italic', 'underline', 'blink', 'reverse', 'hidden', 'strikethrough']);

/** Frames kept on the page; older ones are removed (the raw log has everything). */
const MAX_FRAMES = 20000;

export class Terminal {
  constructor(pre) {
    this.pre = pre;
    // One parser per stream: a colour set on one line holds on the next line of the same stream.
    this.parsers = { stdout: new Anser(), stderr: new Anser() };
    this.frames = 0;
    this.trimmed = false;
  }

  /** Appends one output frame's text. */
  write(stream, text) {
    const kind = stream === 'stderr' ? 'stderr' : 'stdout';
    const atEnd = this.pre.scrollTop + this.pre.clientHeight >= this.pre.scrollHeight - 8;
    const frame = document.createElement('span');
    frame.className = `frame ${kind}`;
    const pieces = this.parsers[kind].ansiToJson(text.replace(OSC, ''), { use_classes: false, remove_empty: true });
    for (const piece of pieces) {
      const content = piece.content.replace(LEFTOVER, '');
      if (!content) continue;
      frame.append(styled(piece, content));
    }
    this.pre.append(frame);
    this.frames += 1;
    if (this.frames > MAX_FRAMES) {
      this.pre.firstElementChild?.remove();
      this.frames -= 1;
      this.trimmed = true;
    }
    if (atEnd) this.pre.scrollTop = this.pre.scrollHeight;
  }

  /** The text shown, as the user reads it. */
  text() {
    return this.pre.textContent;
  }
}

/** A span for one parsed piece. Colours are set through the CSSOM (allowed by the CSP). */
function styled(piece, content) {
  const span = document.createElement('span');
  span.textContent = content;
  let fg = piece.fg_truecolor || piece.fg;
  let bg = piece.bg_truecolor || piece.bg;
  if (piece.isInverted) [fg, bg] = [bg || '13, 17, 23', fg || '230, 237, 243'];
  if (fg) span.style.color = `rgb(${fg})`;
  if (bg) span.style.backgroundColor = `rgb(${bg})`;
  for (const d of piece.decorations || []) {
    if (DECORATIONS.has(d)) span.classList.add(`ansi-${d}`);
  }
  return span;
}
