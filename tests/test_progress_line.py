"""The progress line: on a terminal only, never with --json; logs at most every few seconds."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

from final_exporter.common.progress import Progress, TerminalLine, Throttled

CLI = os.path.join(os.path.dirname(sys.executable), 'final-exporter')


def export_args(model_uri: str, export_base: str, *extra: str) -> list[str]:
    return [
        'export', '--model', model_uri, '--export-base', export_base, '--name', 'penguin',
        '--no-smoke-test', '--no-require-blessing', *extra,
    ]  # fmt: skip


def run_with_stderr_on_a_terminal(args: list[str]) -> tuple[int, str, str]:
    """Runs the CLI with stderr on a pseudo-terminal; returns (exit code, stdout, terminal)."""
    # No wait for the usual 2 s: the test model copies in milliseconds.
    env = {**os.environ, 'FINAL_EXPORTER_PROGRESS_DELAY': '0'}
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [CLI, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal, env=env
    )
    os.close(terminal)
    seen = bytearray()
    while True:
        try:
            data = os.read(controller, 65536)
        except OSError:  # EIO: every copy of the terminal's other end is closed
            break
        if not data:
            break
        seen += data
    out = proc.stdout.read().decode()
    proc.stdout.close()
    code = proc.wait(timeout=300)
    os.close(controller)
    return code, out, seen.decode()


def test_on_a_terminal_the_export_shows_a_progress_line_then_erases_it(model_uri, tmp_path):
    code, out, terminal = run_with_stderr_on_a_terminal(
        export_args(model_uri, str(tmp_path / 'serving'))
    )

    assert code == 0, terminal
    assert out.startswith('exported version ')
    assert terminal.startswith('\r')
    line = terminal.split('\r')[1]
    assert ' of ' in line and 'files' in line and '/s' in line and 'left' in line, line
    assert terminal.endswith('\r\x1b[K')  # erased before the result is printed


def test_with_json_a_terminal_shows_no_progress_line(model_uri, tmp_path):
    code, out, terminal = run_with_stderr_on_a_terminal(
        export_args(model_uri, str(tmp_path / 'serving'), '--json')
    )

    assert code == 0, terminal
    assert json.loads(out)['pushed'] is True
    assert terminal == ''


def test_when_stderr_is_no_terminal_nothing_is_shown(model_uri, tmp_path):
    run = subprocess.run(
        [CLI, *export_args(model_uri, str(tmp_path / 'serving'))],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, 'FINAL_EXPORTER_PROGRESS_DELAY': '0'},
    )

    assert run.returncode == 0, run.stderr
    assert run.stderr == ''


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_log_lines_come_at_most_every_five_seconds_and_not_before_five():
    logged: list[str] = []
    clock = FakeClock()
    progress = Progress(100 * 2**20, 1, report=Throttled(logged.append), clock=clock)

    for _ in range(100):  # one MiB every 0.25 s: 25 s in all
        clock.now += 0.25
        progress.add_bytes(2**20)

    assert len(logged) == 5  # at 5, 10, 15, 20 and 25 s
    assert logged[0].startswith('20.0 MiB of 100.0 MiB, 0 of 1 files, 4.0 MiB/s, 20 s left')


def test_terminal_line_rewrites_in_place_every_half_second_after_the_delay(tmp_path):
    clock = FakeClock()
    with open(tmp_path / 'tty', 'w') as stream:
        line = TerminalLine(stream, delay=2.0, interval=0.5)
        progress = Progress(32 * 2**20, 1, report=line, clock=clock)
        for _ in range(32):  # one MiB every 0.125 s: 4 s in all
            clock.now += 0.125
            progress.add_bytes(2**20)
        line.close()
    shown = (tmp_path / 'tty').read_bytes().decode()

    updates = shown.split('\r')[1:-1]
    assert len(updates) == 5  # at 2.0, 2.5, 3.0, 3.5 and 4.0 s
    assert updates[0] == '16.0 MiB of 32.0 MiB, 0 of 1 files, 8.0 MiB/s, 2 s left\x1b[K'
    assert shown.endswith('\r\x1b[K')
