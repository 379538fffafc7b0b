"""`pip install ./python` into a fresh venv with no index: the in-tree backend needs no download."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_pip_installs_the_package_without_a_network(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    # Debian's python3 (with python3-venv); system site packages provide numpy.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONPATH": ""}
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--no-index", str(REPO / "python")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    # Run from elsewhere so the source tree cannot shadow the installed copy.
    probe = (
        "import kvtier, pathlib; "
        "print(pathlib.Path(kvtier.__file__).parent); "
        "print(kvtier.chain_keys([1, 2, 3, 4, 5, 6, 7, 8], 4)[1].hex()); "
        "print(kvtier.kv_layout(num_layers=1, num_blocks=2, block_tokens=1, kv_heads=1, head_dim=2)['extent'])"
    )
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    where, key, extent = done.stdout.split()
    assert Path(where).is_relative_to(venv)
    assert key == "84b3cac8df2e1657b7e27129463e6acc73af919b797b1820fdee41bd8e482c23"
    assert extent == "16"
    # The wheel carries the typed marker with the modules.
    assert (Path(where) / "py.typed").exists() and (Path(where) / "client.py").exists()
