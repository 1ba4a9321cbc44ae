"""What the command says on stderr: one-line errors and warnings, and progress bars."""

import sys
import time

PROG = "npvitpose"


def error(message):
    """The one line every failure of the command ends in."""
    text = " ".join(str(message).split()) or "unknown error"
    sys.stderr.write(f"{PROG}: error: {text}\n")
    sys.stderr.flush()


def warn(message):
    sys.stderr.write(f"{PROG}: warning: {message}\n")


def os_message(e):
    """An OSError as one line: what went wrong and on which file."""
    name = e.filename if e.filename is not None else ""
    what = e.strerror or str(e) or type(e).__name__
    return f"{what}: {name}" if name else what


class Progress:
    """A one-line progress bar on stderr; silent unless enabled (default: only when stderr is a terminal)."""

    def __init__(self, total, label, enabled=None, unit=""):
        self.total, self.label, self.unit, self.done = total, label, unit, 0
        self.enabled = _isatty(sys.stderr) if enabled is None else bool(enabled)
        self._last, self._shown = 0.0, None

    def update(self, step=1):
        self.done += step
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.1 or (self.total and self.done >= self.total)):
            self._last = now
            self._draw()

    def _draw(self):
        line = self._line()
        if line != self._shown:
            self._shown = line
            sys.stderr.write("\r" + line)
            sys.stderr.flush()

    def _line(self):
        if self.unit == "MB":
            done, total = f"{self.done / 1e6:.1f}", (f"{self.total / 1e6:.1f}" if self.total else "?")
        else:
            done, total = str(self.done), (str(self.total) if self.total else "?")
        if not self.total:
            return f"{self.label} {done} {self.unit}".rstrip()
        frac = min(self.done / self.total, 1.0)
        bar = "#" * int(frac * 30)
        return f"{self.label} [{bar:<30}] {done}/{total} {self.unit} {frac:4.0%}".rstrip()

    def close(self):
        if self.enabled:
            self._draw()
            sys.stderr.write("\n")
            sys.stderr.flush()


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
