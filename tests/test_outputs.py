"""What a command may write and replace (world_models.outputs), and the commands that follow it."""

from __future__ import annotations

import json
import os

import pytest

from leworld_env.cli.main import EVAL_RESULT_KEYS, check_output_paths, main
from world_models.errors import ArgumentError, LeWorldError
from world_models.outputs import (
    MARKER,
    check_output_file,
    check_output_folder,
    marker_kind,
    removed_if_failed,
    replace_folder,
    write_marker,
)


def test_a_folder_is_replaced_only_when_empty_or_marked_as_the_same_kind(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(LeWorldError, match="pass --overwrite"):
        check_output_folder(mine, "--out", "dataset")
    with pytest.raises(LeWorldError, match=r"no \.leworld\.json marker"):
        check_output_folder(mine, "--out", "dataset", overwrite=True)
    with pytest.raises(LeWorldError, match="refusing to delete"):
        replace_folder(mine, "dataset")
    assert (mine / "notes.txt").read_text() == "keep me"

    write_marker(mine, "train-run")
    assert marker_kind(mine) == "train-run"
    with pytest.raises(LeWorldError, match="it is a LeWorld train-run"):
        check_output_folder(mine, "--out", "dataset", overwrite=True)
    write_marker(mine, "dataset")
    check_output_folder(mine, "--out", "dataset", overwrite=True)
    replace_folder(mine, "dataset")
    assert not mine.exists()


def test_a_forged_or_broken_marker_is_no_marker(tmp_path):
    (tmp_path / MARKER).write_text(json.dumps({"kind": "dataset"}))  # not written_by leworld
    assert marker_kind(tmp_path) is None
    (tmp_path / MARKER).write_text("{")
    assert marker_kind(tmp_path) is None
    with pytest.raises(ArgumentError):
        write_marker(tmp_path, "anything")


def test_outputs_that_cannot_be_written_are_named(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(LeWorldError, match="exists and is not a folder"):
        check_output_folder(a_file, "--out", "train-run")
    with pytest.raises(LeWorldError, match="is a file, not a folder"):
        check_output_folder(a_file / "below", "--out", "train-run")
    with pytest.raises(LeWorldError, match="empty path"):
        check_output_folder("", "--out", "train-run")
    with pytest.raises(LeWorldError, match="is a folder"):
        check_output_file(tmp_path, "--json")
    with pytest.raises(LeWorldError, match="not a previous result"):
        check_output_file(a_file, "--json", is_previous=lambda p: False)
    check_output_file(a_file, "--json", overwrite=True)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        with pytest.raises(LeWorldError, match="not writable"):
            check_output_folder(locked / "run", "--out", "train-run")


def test_a_failed_command_removes_only_the_empty_folder_it_created(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RuntimeError), removed_if_failed(run):
        (run / "tb").mkdir()
        write_marker(run, "train-run")
        raise RuntimeError("failed before writing anything")
    assert not run.exists()

    with pytest.raises(RuntimeError), removed_if_failed(run):
        (run / "checkpoint.pt").write_bytes(b"progress")
        raise RuntimeError("failed after writing")
    assert (run / "checkpoint.pt").exists()

    nested = tmp_path / "a" / "b" / "run"
    with pytest.raises(RuntimeError), removed_if_failed(nested):
        raise RuntimeError("failed at once")
    assert not (tmp_path / "a").exists()

    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(RuntimeError), removed_if_failed(existing):
        raise RuntimeError("not created here")
    assert existing.exists()


def test_eval_json_refuses_a_file_that_is_not_a_previous_result(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text('{"image_size": 64}')
    assert main(["eval", "--agent", "random", "--episodes", "1", "--json", str(config)]) == 2
    err = capsys.readouterr().err
    assert "not a previous result" in err and str(config) in err and len(err.strip().splitlines()) == 1
    assert config.read_text() == '{"image_size": 64}'
    previous = tmp_path / "previous.json"
    previous.write_text(json.dumps(dict.fromkeys(EVAL_RESULT_KEYS, 0)))
    check_output_paths(previous, None)  # an earlier result is replaced without --overwrite
    check_output_paths(config, None, overwrite=True)
    assert main(["eval", "--agent", "random", "--episodes", "1", "--json", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_bench_json_and_recordings_refuse_other_files(tmp_path, capsys):
    from leworld_env.playback.video import check_video_path

    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}')
    assert main(["bench", "memory", "--quick", "--json", str(notes)]) == 2
    assert "not a previous result" in capsys.readouterr().err
    assert notes.read_text() == '{"mine": 1}'

    clip = tmp_path / "clip.gif"
    clip.write_text("my own text, not a GIF")
    with pytest.raises(LeWorldError, match="not a previous result"):
        check_video_path(clip)
    clip.write_bytes(b"GIF89a" + bytes(20))
    assert check_video_path(clip) == clip


def test_an_error_is_one_line_whatever_it_quotes():
    err = LeWorldError("x.yml: unreadable (while scanning\n  in line 3\n\tcolumn 2)")
    assert str(err) == "x.yml: unreadable (while scanning in line 3 column 2)"
