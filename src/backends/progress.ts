// Turns the progress text of host tools into operation progress (0–100).
//   rbd:         "\rRemoving image: 3% complete..."   … "\rImage export: 100% complete...done.\n"
//                (stderr; each update *starts* with \r, so the newest one has no terminator yet)
//   qemu-img -p: "    (12.34/100%)\r"                  (stdout, not stderr, in qemu-img 7.2)
// Feed it raw chunks (RunOptions.onStderrChunk / onStdoutChunk) or whole lines.

/** "N% complete" (rbd) and "(N/100%)" (qemu-img -p); N may have decimals. */
const PATTERNS = [/(?<![\d.])(\d{1,3}(?:\.\d+)?)% complete/g, /\((\d{1,3}(?:\.\d+)?)\/100%\)/g];

/** Longest unterminated tail kept between chunks: a progress update is a few dozen characters. */
const MAX_PENDING = 1024;

/**
 * Returns a feeder for tool output. `onProgress` receives whole percentages,
 * 0–100, strictly increasing: repeats and regressions (a tool's second phase
 * starting again at 0) are dropped, so an operation's progress never goes back.
 */
export function progressParser(onProgress: (pct: number) => void): (chunk: string) => void {
  let pending = '';
  let last = -1;

  const report = (segment: string): void => {
    let best = -1;
    for (const pattern of PATTERNS) {
      for (const m of segment.matchAll(pattern)) {
        const value = Number(m[1]);
        if (Number.isFinite(value) && value <= 100) best = Math.max(best, Math.floor(value));
      }
    }
    if (best > last) {
      last = best;
      onProgress(best);
    }
  };

  return (chunk: string) => {
    const text = pending + chunk;
    const segments = text.split(/\r\n|\r|\n/);
    // The last piece has no terminator yet. Both patterns end in a fixed suffix ("% complete", "/100%)"),
    // so a complete match in it is already final (rbd's newest update looks exactly like this) and a
    // number cut mid-chunk cannot match early; keep the piece so a split update completes next time.
    pending = (segments.pop() ?? '').slice(-MAX_PENDING);
    for (const segment of segments) report(segment);
    report(pending);
  };
}
