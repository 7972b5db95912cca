"""Outputs: a directory store replaced by renames and recovered after a kill at any step, leftovers of
dead writers removed (never a live one's), concurrent writers, and outputs that are inputs refused."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from emdtree.trees import files

from cli_helpers import assert_input_error, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_FILES = 5


def _write(target, version: str) -> None:
    with files.atomic_directory(target) as d:
        for i in range(N_FILES):
            with open(os.path.join(d, f"f{i}"), "w") as fh:
                fh.write(version)


def _version(target) -> str:
    """The version of the complete store at ``target`` (an assertion error when it is not complete)."""
    names = sorted(os.listdir(target))
    assert names == [f"f{i}" for i in range(N_FILES)], names
    contents = set()
    for name in names:
        with open(os.path.join(target, name)) as fh:
            contents.add(fh.read())
    assert len(contents) == 1, contents
    return contents.pop()


def _beside(target) -> list[str]:
    return sorted(p for p in os.listdir(os.path.dirname(target)) if p != os.path.basename(target))


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _dead_token() -> str:
    return f"{_dead_pid()}-0-0badc0de-{files._host()}"


# ----------------------------------------------------------------------------- the swap, interrupted

STEPS = ["complete", "aside", "in", "swapped", "trash"]


@pytest.mark.parametrize("step", STEPS)
def test_an_error_at_any_step_leaves_the_old_or_the_new_store_and_no_leftovers(tmp_path, monkeypatch, step):
    target = str(tmp_path / "out" / "d.zarr")
    os.mkdir(os.path.dirname(target))
    _write(target, "old")

    def fail(name):
        if name == step:
            raise KeyboardInterrupt

    monkeypatch.setattr(files, "_step", fail)
    with pytest.raises(KeyboardInterrupt):
        _write(target, "new")
    assert _version(target) == ("old" if step in ("complete", "aside", "in") else "new")
    assert _beside(target) == []


_KILL = textwrap.dedent("""
    import os, sys
    from emdtree.trees import files
    target, step = sys.argv[1], sys.argv[2]
    def stop(name):
        if name == step:
            os._exit(9)
    files._step = stop
    with files.atomic_directory(target) as d:
        for i in range({n}):
            with open(os.path.join(d, "f%d" % i), "w") as fh:
                fh.write("new")
            if step == "write":
                os._exit(9)
""").format(n=N_FILES)


@pytest.mark.parametrize("step", ["write"] + STEPS)
def test_a_kill_at_any_step_is_recovered_by_a_read_and_by_the_next_run(tmp_path, step):
    target = str(tmp_path / "out" / "d.zarr")
    os.mkdir(os.path.dirname(target))
    _write(target, "old")
    code = subprocess.run([sys.executable, "-c", _KILL, target, step], env=_env()).returncode
    assert code == 9
    if step == "in":  # killed between the two renames: both wait beside the target
        assert not os.path.exists(target)
        assert [name.split("-")[0] for name in _beside(target)] == ["d.zarr.new", "d.zarr.old"]
    else:
        assert _version(target) == ("old" if step in ("write", "complete", "aside") else "new")
        assert _beside(target) != []  # what the killed run left
    files.recover_directory(target)  # what a reader does first
    assert _version(target) == ("old" if step in ("write", "complete", "aside") else "new")
    assert _beside(target) == []
    _write(target, "next")
    assert _version(target) == "next" and _beside(target) == []


def test_the_next_run_completes_a_swap_that_a_kill_interrupted(tmp_path):
    target = str(tmp_path / "out" / "d.zarr")
    os.mkdir(os.path.dirname(target))
    _write(target, "old")
    assert subprocess.run([sys.executable, "-c", _KILL, target, "in"], env=_env()).returncode == 9
    _write(target, "next")  # no read in between
    assert _version(target) == "next" and _beside(target) == []


# ----------------------------------------------------------------------------- leftovers

def test_leftovers_of_dead_writers_go_and_those_of_live_ones_stay(tmp_path):
    target = str(tmp_path / "out" / "d.zarr")
    os.mkdir(os.path.dirname(target))
    live = [f"d.zarr.partial-{files._writer_token()}",  # this process
            f"d.zarr.partial-{os.getpid()}",  # this process, the name of older versions
            f"d.zarr.partial-{_dead_pid()}-0-00000000-other.host"]  # another host: cannot tell
    dead = [f"d.zarr.partial-{_dead_token()}", f"d.zarr.partial-{_dead_pid()}", f"d.zarr.new-{_dead_token()}",
            f"d.zarr.trash-{_dead_token()}"]
    if files._start_time(os.getpid()) != "0":  # Linux: a pid given to a later process is told apart
        dead.append(f"d.zarr.partial-{os.getpid()}-1-00000000-{files._host()}")
    for name in live + dead:
        os.makedirs(os.path.join(os.path.dirname(target), name, "distances"))
    _write(target, "new")
    assert _version(target) == "new"
    assert _beside(target) == sorted(live)


def test_temporary_files_of_dead_writers_go(tmp_path):
    path = tmp_path / "d.tsv"
    dead, live = tmp_path / f".d.tsv.{_dead_token()}.tmp", tmp_path / f".d.tsv.{files._writer_token()}.tmp"
    unknown = tmp_path / ".d.tsv.1a2b3c4d.tmp"  # older versions' name: its writer cannot be told
    for p in (dead, live, unknown):
        p.write_text("partial")
    with files.atomic_write(path) as fh:
        fh.write("done\n")
    assert path.read_text() == "done\n"
    assert not dead.exists() and live.exists() and unknown.exists()


# ----------------------------------------------------------------------------- an old store that cannot go

def _refuse_removal(monkeypatch, blocked: str) -> None:
    """``blocked`` may not be changed: by its permissions, or (as root, whom they do not stop) by
    a refusal of os.access as the permissions would give."""
    os.chmod(blocked, 0o500)
    if os.geteuid() == 0:
        real = os.access

        def access(path, mode, *args, **kwargs):
            if os.path.abspath(path) == os.path.abspath(blocked) and mode & os.W_OK:
                return False
            return real(path, mode, *args, **kwargs)

        monkeypatch.setattr(files.os, "access", access)


def test_an_old_store_that_cannot_be_removed_is_left_intact(tmp_path, monkeypatch):
    target = str(tmp_path / "out" / "d.zarr")
    os.mkdir(os.path.dirname(target))
    _write(target, "old")
    os.mkdir(os.path.join(target, "f0.sub"))
    os.rename(os.path.join(target, "f0"), os.path.join(target, "f0.sub", "f0"))
    try:
        _refuse_removal(monkeypatch, os.path.join(target, "f0.sub"))
        with pytest.raises(PermissionError, match="cannot be removed.*left as it was"):
            _write(target, "new")
    finally:
        os.chmod(os.path.join(target, "f0.sub"), 0o700)
    assert sorted(os.listdir(target)) == ["f0.sub"] + [f"f{i}" for i in range(1, N_FILES)]
    assert _beside(target) == []


def test_a_previous_store_whose_removal_fails_late_is_named(tmp_path, monkeypatch):
    target = str(tmp_path / "out" / "d.zarr")
    os.mkdir(os.path.dirname(target))
    _write(target, "old")

    def rmtree(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", os.path.join(path, "f3"))

    monkeypatch.setattr(files.shutil, "rmtree", rmtree)
    with pytest.warns(UserWarning, match="could not be removed.*next write"):
        _write(target, "new")
    assert _version(target) == "new"
    assert [name.split("-")[0] for name in _beside(target)] == ["d.zarr.trash"]


# ----------------------------------------------------------------------------- the command line

NEWICK = "((a:1,b:2):0.5,(c:3,d:1):1,e:2);"


@pytest.fixture
def table(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.integers(1, 6, (6, 5))
    (tmp_path / "t.nwk").write_text(NEWICK)
    lines = ["id\ta\tb\tc\td\te"] + [f"s{i}\t" + "\t".join(map(str, row)) for i, row in enumerate(X)]
    (tmp_path / "t.tsv").write_text("\n".join(lines) + "\n")
    return tmp_path


def _zarr_store(path, ids):
    zarr = pytest.importorskip("zarr")
    group = zarr.open_group(str(path), mode="r")
    assert list(group["sample_ids"][...]) == ids
    return group["distances"][...]


def test_cli_refuses_an_old_store_it_cannot_remove_before_computing(table, capsys, monkeypatch):
    pytest.importorskip("zarr")
    pytest.importorskip("dask")
    out = table / "d.zarr"
    argv = ["pairwise", table / "t.tsv", "--tree", table / "t.nwk", "-o", out, "-q"]
    assert run(argv, capsys)[0] == 0
    before = _zarr_store(out, [f"s{i}" for i in range(6)])
    try:
        _refuse_removal(monkeypatch, str(out / "sample_ids"))
        assert_input_error(argv, capsys, repr(str(out)), "cannot be removed", "sample_ids", "left as it was")
    finally:
        os.chmod(out / "sample_ids", 0o700)
    np.testing.assert_array_equal(_zarr_store(out, [f"s{i}" for i in range(6)]), before)
    assert _beside(str(out)) == sorted(["t.nwk", "t.tsv"])


def test_cli_removes_dead_leftovers_and_reads_a_store_left_between_names(table, capsys):
    pytest.importorskip("zarr")
    pytest.importorskip("dask")
    out = table / "d.zarr"
    argv = ["pairwise", table / "t.tsv", "--tree", table / "t.nwk", "-q"]
    stale = [table / f"d.zarr.partial-{_dead_pid()}", table / f"d.zarr.partial-{_dead_token()}"]
    for path in stale:
        os.makedirs(path / "distances" / "c")
    mine = table / f"d.zarr.partial-{files._writer_token()}"
    os.makedirs(mine)
    assert run(argv + ["-o", out], capsys)[0] == 0
    assert not any(p.exists() for p in stale) and mine.exists()
    want = _zarr_store(out, [f"s{i}" for i in range(6)])
    # a run killed between its two renames: the store is beside its name until the next reader
    os.rename(out, table / f"d.zarr.new-{_dead_token()}")
    code, stdout, err = run(["pairwise", out, "--tree", table / "t.nwk", "--transpose", "-o", table / "e.tsv",
                             "-q"], capsys)
    assert (code, err) == (2, "emdtree: error: the Zarr group {!r} has no array 'counts' (it has distances, "
                              "sample_ids)\n".format(str(out)))  # read: it is back at its name
    np.testing.assert_array_equal(_zarr_store(out, [f"s{i}" for i in range(6)]), want)


_CONCURRENT = textwrap.dedent("""
    import sys
    import numpy as np, dask, dask.array as da
    from emdtree.cli.scaleout import write_zarr
    target, tag = sys.argv[1], sys.argv[2]
    D = da.from_array(np.arange(64.0).reshape(8, 8), chunks=4)
    with dask.config.set(scheduler="synchronous"):
        for i in range(6):
            write_zarr(target, D, ["%s%d" % (tag, k) for k in range(8)], {"writer": tag}, None, False)
""")


def test_concurrent_writers_both_finish_and_leave_a_complete_store(tmp_path):
    zarr = pytest.importorskip("zarr")
    pytest.importorskip("dask")
    target = str(tmp_path / "out" / "d.zarr")
    os.mkdir(os.path.dirname(target))
    writers = [subprocess.Popen([sys.executable, "-c", _CONCURRENT, target, tag], env=_env(),
                                stderr=subprocess.PIPE, text=True) for tag in ("a", "b")]
    errors = [w.communicate(timeout=120)[1] for w in writers]
    assert [w.returncode for w in writers] == [0, 0], errors
    group = zarr.open_group(target, mode="r")
    tag = group.attrs["writer"]
    assert list(group["sample_ids"][...]) == [f"{tag}{k}" for k in range(8)]
    np.testing.assert_array_equal(group["distances"][...], np.arange(64.0).reshape(8, 8))
    assert _beside(target) == []


# ----------------------------------------------------------------------------- outputs that are inputs

def test_cli_refuses_an_output_that_is_an_input(table, capsys):
    nwk, tsv = table / "t.nwk", table / "t.tsv"
    os.symlink(tsv, table / "link.tsv")
    os.link(tsv, table / "hard.tsv")
    before = tsv.read_text()
    pair = ["pairwise", tsv, "--tree", nwk, "-q", "-o"]
    assert_input_error(pair + [tsv], capsys, "-o", "is the input TABLE", "choose another output")
    assert_input_error(pair + [table / "link.tsv"], capsys, "is the input TABLE")
    assert_input_error(pair + [table / "hard.tsv"], capsys, "is the input TABLE")
    assert_input_error(pair + [table / "." / "t.nwk"], capsys, "is the input --tree")
    assert tsv.read_text() == before and nwk.read_text() == NEWICK
    (table / "p.npy").write_bytes(b"")
    np.save(table / "p.npy", np.array([0.5, 0.5, 0, 0, 0]))
    assert_input_error(["distance", table / "p.npy", "1,0,0,0,0", "--tree", nwk, "-o", table / "p.npy"],
                       capsys, "-o", "is the input P")
    np.save(table / "pred.npy", np.full((4, 5), 0.2))
    np.save(table / "labels.npy", np.array([0, 1, 2, 3]))
    assert_input_error(["evaluate", table / "pred.npy", table / "labels.npy", "--tree", nwk, "--per-class",
                        table / "labels.npy"], capsys, "--per-class", "is the input LABELS")
    np.testing.assert_array_equal(np.load(table / "labels.npy"), [0, 1, 2, 3])


def test_cli_refuses_a_store_that_holds_or_is_an_input(table, capsys):
    zarr = pytest.importorskip("zarr")
    pytest.importorskip("dask")
    store = table / "t.zarr"
    group = zarr.open_group(str(store), mode="w")
    group.create_array("counts", data=np.ones((3, 5)))
    nwk = table / "t.nwk"
    assert_input_error(["pairwise", store, "--tree", nwk, "-o", store, "-q"], capsys, "is the input TABLE")
    os.symlink(store, table / "link.zarr")
    assert_input_error(["pairwise", store, "--tree", nwk, "-o", table / "link.zarr", "-q"], capsys,
                       "is the input TABLE")
    assert_input_error(["pairwise", store, "--tree", nwk, "-o", store / "d.tsv", "-q"], capsys,
                       "lies inside the input TABLE")
    # an old output store that holds an input: replacing it would delete the input
    out = table / "d.zarr"
    zarr.open_group(str(out), mode="w")
    (out / "tree.nwk").write_text(NEWICK)
    assert_input_error(["pairwise", table / "t.tsv", "--tree", out / "tree.nwk", "-o", out, "-q"], capsys,
                       "holds the input --tree")
    assert (out / "tree.nwk").read_text() == NEWICK
    assert zarr.open_group(str(store), mode="r")["counts"].shape == (3, 5)


def test_cli_names_an_old_store_whose_removal_fails_after_the_swap(table, capsys, monkeypatch):
    pytest.importorskip("zarr")
    pytest.importorskip("dask")
    out = table / "d.zarr"
    argv = ["pairwise", table / "t.tsv", "--tree", table / "t.nwk", "-o", out, "-q"]
    assert run(argv, capsys)[0] == 0
    (table / "t.tsv").write_text("id\ta\tb\tc\td\te\nx\t1\t0\t0\t0\t0\ny\t0\t1\t0\t0\t0\n")

    real = files.shutil.rmtree

    def rmtree(path, *args, **kwargs):
        if ".trash-" not in os.fspath(path):
            return real(path, *args, **kwargs)
        raise PermissionError(13, "Permission denied", os.path.join(path, "sample_ids"))

    monkeypatch.setattr(files.shutil, "rmtree", rmtree)
    code, _, err = run(argv, capsys)
    assert code == 0
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("emdtree: warning: ") and "could not be removed" in lines[0]
    assert _zarr_store(out, ["x", "y"])[0, 1] == 3.0


def test_missing_folders_above_a_store_are_made(tmp_path):
    target = str(tmp_path / "a" / "b" / "d.zarr")
    _write(target, "v")
    assert _version(target) == "v" and _beside(target) == []


def test_reading_a_table_store_recovers_it_in_python_too(tmp_path):
    """emdtree's own reader of Zarr count tables (not only the CLI) puts a store left beside its name
    by a killed writer back in place before it opens it."""
    zarr = pytest.importorskip("zarr")
    pytest.importorskip("dask")
    from emdtree.formats.lazy_tables import _open_zarr

    path = tmp_path / "t.zarr"
    group = zarr.open_group(str(path), mode="w")
    group.create_array("counts", data=np.arange(6.0).reshape(2, 3))
    os.rename(path, tmp_path / f"t.zarr.new-{_dead_token()}")
    counts, _, _ = _open_zarr(str(path))
    np.testing.assert_array_equal(np.asarray(counts), np.arange(6.0).reshape(2, 3))
    assert _beside(str(path)) == []


def test_cli_names_an_output_folder_that_is_a_file_or_missing(table, capsys):
    (table / "afile").write_text("")
    pair = ["pairwise", table / "t.tsv", "--tree", table / "t.nwk", "-q", "-o"]
    for out in ("afile/d.tsv", "afile/d.zarr", "afile/x/d.zarr"):
        assert_input_error(pair + [table / out], capsys, "-o", "is a file, not a folder")
    assert_input_error(pair + [table / "nodir" / "d.tsv"], capsys, "-o", "the folder", "does not exist")
    assert_input_error(["distance", "1,0", "0,1", "-o", table / "afile" / "v.npy"], capsys,
                       "is a file, not a folder")
    assert (table / "afile").read_text() == "" and not (table / "nodir").exists()
