"""The offline bundle: parts no larger than asked, reassembled byte for byte, installed from the
parts into a fresh folder without the package index, and refused when a part is damaged. Neither the
build nor the installer ever replaces a folder of the user's: the bundle goes only into a new, empty
or earlier bundle's folder (checked before building), the installer only into a new, empty or
earlier-installed one; the launcher quotes its paths for the shell and keeps to the user's umask."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from ftscale.errors import FtscaleError
from ftscale.offline_bundle import PART_PREFIX, check_folder, platforms

from conftest import BIN, ROOT

# test_install.py and test_offline_bundle.py build ftscale's wheel in the checkout's build/
# folder: under xdist they share a worker, so one build at a time.
pytestmark = pytest.mark.xdist_group("builds_the_wheel")

PURE = "mdurl==0.1.2"  # a small pure-Python wheel, in pip's cache or the index


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A bundle of ftscale's wheel, one pure-Python wheel, the checkout's configs and data and a
    prepared-model folder, cut into parts of 0.5 MiB; pip reaches no index while making it."""
    tmp = tmp_path_factory.mktemp("bundle")
    links = tmp / "links"
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(links), PURE],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    models = tmp / "models" / "smollm2-135m"
    models.mkdir(parents=True)
    (models / "ftscale-model.json").write_text("{}")
    (models / "model.safetensors").write_bytes(hashlib.sha256(b"x").digest() * 40000)  # 1.2 MiB: spans parts
    out = tmp / "out"
    cmd = [sys.executable, "-m", "ftscale.offline_bundle", "--out", str(out), "--part-size-mib", "0.5",
           "--packages", PURE, "--present", "", "--pip-arg=--no-index", f"--pip-arg=--find-links={links}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={"FTSCALE_MODELS_DIR": str(tmp / "models"),
                                                                              "PATH": str(BIN), "HOME": str(tmp)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return tmp, out, links, models


def test_parts_are_no_larger_than_the_limit_and_reassemble_byte_for_byte(bundle):
    tmp, out, links, models = bundle
    manifest = json.loads((out / "manifest.json").read_text())
    parts = sorted(out.glob(f"{PART_PREFIX}*"))
    assert len(parts) == len(manifest["parts"]) > 2
    assert all(p.stat().st_size <= 0.5 * 2**20 for p in parts)
    whole = tmp / "whole.tar"
    whole.write_bytes(b"".join(p.read_bytes() for p in parts))  # what `cat ftscale-offline.tar.part*` does
    assert sha256(whole) == manifest["tar_sha256"]
    with tarfile.open(whole) as tar:
        tar.extractall(tmp / "unpacked", filter="data")
    originals = {"root/configs/gpus.yaml": ROOT / "configs" / "gpus.yaml",
                 "root/data/formatting/train.jsonl": ROOT / "data" / "formatting" / "train.jsonl",
                 "root/models/smollm2-135m/model.safetensors": models / "model.safetensors",
                 f"wheels/{next(links.glob('*.whl')).name}": next(links.glob("*.whl"))}
    for name, original in originals.items():
        assert sha256(tmp / "unpacked" / name) == sha256(original), name
    for f in manifest["files"]:
        assert sha256(tmp / "unpacked" / f["path"]) == f["sha256"]
    assert {w["name"] for w in manifest["wheels"]} == {"ftscale", "mdurl"}
    assert manifest["python_version"] == "3.12" and "manylinux2014_x86_64" in manifest["platforms"]


def test_install_from_the_parts_into_a_fresh_folder(bundle):
    tmp, out, _, _ = bundle
    target = tmp / """target $HOME "quoted" `x` it's"""  # every character the shell would read
    proc = subprocess.run([sys.executable, str(out / "install.py"), "--target", str(target)], capture_output=True, text=True,
                          preexec_fn=lambda: os.umask(0o027))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (target / "bin" / "ftscale").stat().st_mode & 0o777 == 0o750  # executable, as the umask allows
    assert (target / "ftscale" / "doctor.py").is_file() and (target / "ftscale" / "train" / "doctor_gpu.py").is_file()
    assert (target / "configs" / "gpus.yaml").is_file() and (target / "models" / "smollm2-135m" / "model.safetensors").is_file()
    # mdurl is installed here already (a dependency of the test tools): kept, not reinstalled
    have = subprocess.run([sys.executable, "-c", "import mdurl"]).returncode == 0
    assert ("skip mdurl 0.1.2" in proc.stdout) == have and (target / "mdurl").is_dir() != have
    # the installed ftscale runs from the folder, finding its configs and the model there
    listed = subprocess.run([str(target / "bin" / "ftscale"), "models", "list"], capture_output=True, text=True, cwd=tmp)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert any(line.startswith("smollm2-135m") and " prepared " in line for line in listed.stdout.splitlines())
    helped = subprocess.run([str(target / "bin" / "ftscale"), "--help"], capture_output=True, text=True)
    assert "doctor" in helped.stdout


def test_a_damaged_part_is_refused_before_anything_is_installed(bundle, tmp_path):
    _, out, _, _ = bundle
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in out.iterdir():
        copy.joinpath(f.name).write_bytes(f.read_bytes())
    part = copy / f"{PART_PREFIX}001"
    data = bytearray(part.read_bytes())
    data[100] ^= 0xFF
    part.write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, str(copy / "install.py"), "--target", str(tmp_path / "t")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {part} is damaged (size or sha256 differs from manifest.json): copy it again"
    assert not (tmp_path / "t" / "ftscale").exists()


def test_platform_tags_cover_every_older_manylinux():
    tags = platforms("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_24_x86_64" in tags  # bitsandbytes' tag
    assert {"manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert platforms("macosx_14_0_arm64") == ["macosx_14_0_arm64"]


def _item(name, requires=(), pure=True):
    tag = "py3-none-any" if pure else "cp312-cp312-manylinux_2_28_x86_64"
    return {"metadata": {"name": name, "version": "1", "requires_dist": list(requires)},
            "download_info": {"url": f"https://files/{name}-1-{tag}.whl"}}


def test_the_compiled_wheels_a_compiled_present_package_brings_are_left_out_extras_followed():
    from ftscale.offline_bundle import left_out

    report = {"install": [
        _item("torch", ["cuda-toolkit[cudart]==13; platform_system == 'Linux'", "sympy", "pywin; sys_platform == 'win32'"], pure=False),
        _item("cuda-toolkit", ['nvidia-cuda-runtime; extra == "cudart"', 'nvidia-cufft; extra == "cufft"']),
        _item("nvidia-cuda-runtime", pure=False), _item("nvidia-cufft", pure=False), _item("sympy"), _item("pywin"),
        _item("transformers", ["tokenizers", "numpy"]), _item("tokenizers", pure=False), _item("numpy", pure=False),
        _item("trl", ["transformers", "datasets"]), _item("datasets", ["numpy"]),
    ]}
    out = left_out(report, ["torch==2.11.0", "transformers==5.17.0"], "3.12")
    # torch's compiled closure, through cuda-toolkit's `cudart` extra only; a marker for another
    # platform is not followed; pure-Python wheels (cuda-toolkit, sympy) are carried
    assert out == {"torch", "nvidia-cuda-runtime"}
    # the pure-Python transformers and what it needs are carried: the installer skips what the target has
    assert not out & {"transformers", "tokenizers", "numpy", "trl", "datasets"}


def _tree(path):
    return sorted((str(p.relative_to(path)), p.stat().st_mtime_ns) for p in path.rglob("*"))


def test_the_bundle_never_replaces_a_folder_of_the_users(tmp_path):
    """`make offline-bundle BUNDLE_ARGS='--output-dir ~/work'` with the user's files in ~/work: refused at
    once (nothing built), nothing touched; the working directory is refused too."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "thesis.txt").write_text("three years")
    before = _tree(tmp_path)
    proc = subprocess.run(["make", "-s", "offline-bundle", "BUNDLE_ARGS=--output-dir ~/work"], cwd=ROOT,
                          capture_output=True, text=True, env=dict(os.environ, HOME=str(tmp_path)), timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"--output-dir {work}: the folder is not empty and was not written by `make offline-bundle`" in proc.stderr
    assert "building" not in proc.stdout  # refused before anything was built
    assert _tree(tmp_path) == before and (work / "thesis.txt").read_text() == "three years"
    empty = tmp_path / "empty"
    empty.mkdir()
    for cwd in (work, empty):  # `--output-dir .`: a folder of the user's, or the shell's own working directory
        proc = subprocess.run([sys.executable, "-m", "ftscale.offline_bundle", "--output-dir", "."], cwd=cwd,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "not written by" in proc.stderr or "the working directory" in proc.stderr
    assert _tree(tmp_path) == sorted(before + [("empty", empty.stat().st_mtime_ns)])


def test_an_earlier_bundle_is_replaced_only_when_it_holds_nothing_else(bundle, tmp_path):
    _, out, _, _ = bundle
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert check_folder(copy) == copy  # the bundle's own folder: built again in place
    (copy / "notes.txt").write_text("mine")
    with pytest.raises(FtscaleError, match=r"holds files `make offline-bundle` did not write \(notes.txt\)"):
        check_folder(copy)
    (copy / "notes.txt").unlink()
    (copy / "manifest.json").write_text('{"name": "a web app"}')  # another program's manifest.json
    with pytest.raises(FtscaleError, match="not written by `make offline-bundle`"):
        check_folder(copy)


def test_the_installer_refuses_a_folder_it_did_not_make(bundle, tmp_path):
    """`install.py --target ~`: pip would replace ~/bin; refused with one line, nothing touched."""
    _, out, _, _ = bundle
    home = tmp_path / "home"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "my-tool").write_text("#!/bin/sh\n")
    before = _tree(home)
    proc = subprocess.run([sys.executable, str(out / "install.py"), "--target", str(home)], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stdout + proc.stderr
    assert f"--target {home}: the folder is not empty and was not made by this installer" in proc.stderr
    assert _tree(home) == before
