"""The pins: exact everywhere, and the GPU set is the CPU set plus CUDA at the same jax version."""
import os
import re

from conftest import ROOT


def pins(name: str) -> tuple[dict, list[str]]:
    """{package: version} and the other non-comment lines of a requirements file."""
    found, other = {}, []
    for line in open(os.path.join(ROOT, name)):
        line = line.split("#", 1)[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[a-z0-9,]+\])?==(\S+)", line)
        if match:
            found[match.group(1).lower().replace("_", "-")] = match.group(3)
        elif line:
            other.append(line)
    return found, other


def test_every_requirement_is_an_exact_pin():
    cpu, other = pins("requirements.txt")
    assert other == [] and len(cpu) > 50
    gpu, other = pins("requirements-gpu.txt")
    assert other == ["-r requirements.txt"]
    # Only jax itself appears in both (with the cuda12 extra); nothing else is pinned twice.
    assert set(gpu) & set(cpu) == {"jax"}


def test_the_gpu_set_runs_the_cpu_set_jax_version():
    cpu, _ = pins("requirements.txt")
    gpu, _ = pins("requirements-gpu.txt")
    assert cpu["jax"] == cpu["jaxlib"]
    for name in ("jax", "jax-cuda12-plugin", "jax-cuda12-pjrt"):
        assert gpu[name] == cpu["jax"], name
    assert any(name.startswith("nvidia-cudnn") for name in gpu)
    # distrax's probability backend: one exact nightly build, never the release that fails on jax >= 0.7.
    assert "tensorflow-probability" not in cpu and re.fullmatch(r"0\.\d+\.\d+\.dev\d{8}", cpu["tfp-nightly"])
