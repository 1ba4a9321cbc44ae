"""Models without the network (issue 11, item 2): what a failed download says, --model taking a checkpoint,
`convert` without -o, `fetch --from FILE NAME`, and a cache that keeps only the converted model."""

import json
import os
import shutil

import pytest

from npvitpose.cli import main
from test_cli import BOXES, run, write_image, write_json
from test_fetch import hf_files, server  # noqa: F401 - fixtures: a tiny HF model and a hub look-alike

NOWHERE = "http://127.0.0.1:9"  # nothing listens there


@pytest.fixture
def hf_folder(tmp_path, hf_files):
    folder = tmp_path / "vitpose-tiny"
    folder.mkdir()
    for name, data in hf_files.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def job(tmp_path):
    return write_image(tmp_path / "in.png"), write_json(tmp_path / "b.json", BOXES)


def test_failed_download_says_what_to_do(tmp_path, capsys, job, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", NOWHERE)
    code, out, err = run(capsys, "infer", *job, "--cache", tmp_path / "cache")
    assert code == 1 and out == ""
    last = err.splitlines()[-1]
    assert last.startswith("npvitpose: error: download failed: cannot reach")
    for needle in ("HF_ENDPOINT", "--model"):
        assert needle in last
    assert last.endswith("npvitpose fetch --from FILE vitpose-b")  # the name as typed, not the hub's repo name
    assert not (tmp_path / "cache" / "downloads").exists()  # nothing received: no "unfinished download" listed


def test_model_given_as_a_hugging_face_folder_converts_once_by_content(tmp_path, capsys, job, hf_folder):
    cache = tmp_path / "cache"
    code, out, err = run(capsys, "infer", *job, "--model", hf_folder, "--cache", cache)
    assert code == 0 and err.startswith(f"npvitpose: converting {hf_folder} once into the cache")
    [made] = os.listdir(cache / "converted")
    assert made.startswith("vitpose-tiny-") and made.endswith(".npz")
    code, again, err = run(capsys, "infer", *job, "--model", hf_folder, "--cache", cache)
    assert code == 0 and err == "" and again == out  # the second run loads the converted file
    # the same folder converted by hand gives the same results
    assert run(capsys, "convert", hf_folder, "-o", tmp_path / "by-hand.npz")[0] == 0
    assert run(capsys, "infer", *job, "--model", tmp_path / "by-hand.npz")[1] == out
    # another checkpoint under the same name is another content: converted anew, the first kept
    (hf_folder / "config.json").write_text((hf_folder / "config.json").read_text() + "\n")
    assert run(capsys, "infer", *job, "--model", hf_folder, "--cache", cache)[0] == 0
    assert len(os.listdir(cache / "converted")) == 2


def test_convert_without_output_writes_beside_the_checkpoint(tmp_path, capsys, hf_folder):
    code, out, _ = run(capsys, "convert", hf_folder)
    assert code == 0 and out.startswith(f"{tmp_path / 'vitpose-tiny.npz'}: coco model")
    assert (tmp_path / "vitpose-tiny.npz").exists()


def test_fetch_from_installs_under_a_name_for_offline_use(tmp_path, capsys, job, hf_folder, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", NOWHERE)
    cache = tmp_path / "cache"
    code, out, _ = run(capsys, "fetch", "vitpose-b", "--from", hf_folder, "--cache", cache)  # a published name
    assert code == 0 and out.strip() == str(cache / "vitpose-base.npz")
    code, results, err = run(capsys, "infer", *job, "--cache", cache)  # the default model, no network
    assert code == 0 and err == "" and len(json.loads(results)) == 2
    code, out, _ = run(capsys, "fetch", "my-pose_1", "--from", cache / "vitpose-base.npz", "--cache", cache)
    assert code == 0 and out.strip() == str(cache / "my-pose_1.npz")  # an .npz is checked and copied
    assert run(capsys, "infer", *job, "--model", "my-pose_1", "--cache", cache)[1] == results
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really")
    code, _, err = run(capsys, "fetch", "other", "--from", tmp_path / "broken.npz", "--cache", cache)
    assert code == 1 and err.count("\n") == 1 and not (cache / "other.npz").exists()
    code, _, err = run(capsys, "fetch", "../escape", "--from", cache / "vitpose-base.npz", "--cache", cache)
    assert code == 1 and "is not a model name" in err
    code, _, err = run(capsys, "infer", *job, "--model", "never-installed", "--cache", cache)
    assert code == 1 and "not a known or installed model name" in err


def test_fetch_keeps_only_the_converted_model(server, tmp_path, capsys):
    cache = tmp_path / "cache"
    code, out, _ = run(capsys, "fetch", "vitpose-b", "--cache", cache, "--endpoint", server.url)
    assert code == 0 and out.strip() == str(cache / "vitpose-base.npz")
    assert os.listdir(cache / "downloads") == []  # the raw files went once converted


def test_cache_lists_and_removes(tmp_path, capsys, hf_folder):
    cache = tmp_path / "cache"
    assert run(capsys, "cache", "--cache", cache)[1] == f"{cache}: empty\n"
    run(capsys, "fetch", "vitpose-b", "--from", hf_folder, "--cache", cache)
    run(capsys, "fetch", "mine", "--from", hf_folder, "--cache", cache)
    (cache / "downloads" / "usyd-community--vitpose-plus-huge").mkdir(parents=True)
    (cache / "downloads" / "usyd-community--vitpose-plus-huge" / "model.safetensors.part").write_bytes(b"x" * 1000)
    code, out, _ = run(capsys, "cache", "--cache", cache)
    size = os.path.getsize(cache / "vitpose-base.npz") / 1e6
    assert code == 0 and out.splitlines()[0] == f"{cache}:"
    assert "vitpose-base.npz" in out and f"{size:9.1f} MB  coco, simple head, dim 32, from vitpose-tiny" in out
    assert "an unfinished download" in out and "total" in out.splitlines()[-1]
    code, out, _ = run(capsys, "cache", "--cache", cache, "--remove", "vitpose-b")
    assert code == 0 and out.startswith(f"removed {cache / 'vitpose-base.npz'}")
    assert sorted(os.listdir(cache)) == ["downloads", "mine.npz"]
    code, _, err = run(capsys, "cache", "--cache", cache, "--remove", "vitpose-b")
    assert code == 1 and "is not in the cache" in err
    assert run(capsys, "cache", "--cache", cache, "--clear")[0] == 0
    assert not (cache / "mine.npz").exists() and os.listdir(cache / "downloads") == []
    shutil.rmtree(cache)
