"""What the command says on stderr: one-line errors, warnings and notes, and progress.

Progress is a redrawn bar on a terminal and, where stderr is a log or a pipe (nohup, CI), one plain
line every PERIOD seconds and one at the end. `set_quiet(True)` (`-q`) silences notes and progress;
warnings and errors are always shown.
"""

import sys
import time

PROG = "npvitpose"
PERIOD = 15.0  # seconds between progress lines where stderr is not a terminal
_state = {"quiet": False, "bar": False}  # bar: a terminal bar is drawn and its line not yet ended


def set_quiet(quiet):
    _state["quiet"] = bool(quiet)


def quiet():
    return _state["quiet"]


def _write(line):
    if _state["bar"]:  # end the bar's line first, so the message has a line of its own
        sys.stderr.write("\n")
        _state["bar"] = False
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def error(message):
    """The one line every failure of the command ends in."""
    text = " ".join(str(message).split()) or "unknown error"
    _write(f"{PROG}: error: {text}")


def warn(message):
    _write(f"{PROG}: warning: {message}")


def note(message):
    """What is happening, when it takes a while (silenced by -q)."""
    if not _state["quiet"]:
        _write(f"{PROG}: {message}")


def os_message(e):
    """An OSError as one line: what went wrong and on which file."""
    name = e.filename if e.filename is not None else ""
    what = e.strerror or str(e) or type(e).__name__
    return f"{what}: {name}" if name else what


class Progress:
    """Progress of `total` steps (None: unknown) on stderr; `enabled` None means unless quiet."""

    def __init__(self, total, label, enabled=None, unit=""):
        self.total, self.label, self.unit, self.done = total, label, unit, 0
        self.enabled = (not _state["quiet"]) if enabled is None else bool(enabled)
        self.asked = enabled is not None
        self.tty = isatty(sys.stderr)
        self._start = self._last = time.monotonic()
        self._shown = None

    def update(self, step=1):
        self.done += step
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty and (now - self._last > 0.1 or (self.total and self.done >= self.total)):
            self._last = now
            self._draw()
        elif not self.tty and now - self._last >= PERIOD:
            self._last = now
            _write(self._line())

    def _draw(self):
        line = self._line()
        if line != self._shown or not _state["bar"]:
            self._shown = line
            sys.stderr.write("\r" + line)
            sys.stderr.flush()
            _state["bar"] = True

    def _line(self):
        if self.unit == "MB":
            done, total = f"{self.done / 1e6:.1f}", (f"{self.total / 1e6:.1f}" if self.total else "?")
        else:
            done, total = str(self.done), (str(self.total) if self.total else "?")
        unit = f" {self.unit}" if self.unit else ""
        elapsed = f"{time.monotonic() - self._start:.0f} s"
        if not self.total:
            return f"{self.label}: {done}{unit}, {elapsed}"
        frac = min(self.done / self.total, 1.0)
        if not self.tty:
            return f"{self.label}: {done}/{total}{unit} ({frac:.0%}), {elapsed}"
        return f"{self.label} [{'#' * int(frac * 30):<30}] {done}/{total}{unit} {frac:4.0%} {elapsed}"

    def close(self):
        if not self.enabled:
            return
        if self.tty:
            self._draw()
            sys.stderr.write("\n")
            sys.stderr.flush()
            _state["bar"] = False
        elif self.asked or time.monotonic() - self._start >= PERIOD / 3:  # a log needs no line for a quick step
            _write(self._line())


def isatty(stream):
    """True for a terminal; False for a file, a pipe, or a closed or replaced stream."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
