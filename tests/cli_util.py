"""Running gsmile's command line in a test and reading its one-line error."""

from __future__ import annotations

from gsmile.cli import main


def one_line_error(argv: list[str], capsys, code: int = 2) -> str:
    """Run ``gsmile argv``; assert it exits with ``code`` (argparse's own exits included) and
    writes exactly one line, no traceback, to stderr; return that line."""
    try:
        got = main(argv)
    except SystemExit as exc:  # argparse's own errors
        got = exc.code
    assert got == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err
