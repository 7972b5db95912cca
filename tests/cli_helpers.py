"""Running the ``emdtree`` command line in-process, for the CLI tests."""

from __future__ import annotations

from emdtree.__main__ import main


def run(argv, capsys):
    """Exit status, stdout and stderr of ``emdtree ARGV``."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_input_error(argv, capsys, *fragments):
    """``emdtree ARGV`` ends with status 2 and one ``emdtree: error:`` line holding ``fragments``."""
    code, _, err = run(argv, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emdtree: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]
