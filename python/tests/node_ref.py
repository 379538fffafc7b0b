"""Runs JavaScript against this repository's dist/index.js: the Node library is the reference."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from conftest import REPO

INDEX = REPO / "dist" / "index.js"


def node_eval(script: str, data: Any) -> Any:
    """Runs ``script`` as an ES module with ``kvtier`` (dist/index.js) and ``input`` (data) bound;
    the script's last statement assigns ``output``, printed back as JSON."""
    if not INDEX.exists():
        raise AssertionError(f"{INDEX} is missing: build with `node scripts/build-ts.mjs`")
    program = (
        f"const kvtier = await import({json.dumps(INDEX.as_uri())});\n"
        "const input = JSON.parse(require('node:fs').readFileSync(0, 'utf8'));\n"
        "let output;\n"
        f"{script}\n"
        "process.stdout.write(JSON.stringify(output));\n"
    )
    # CommonJS gives `require`; top-level await needs an async wrapper there.
    wrapped = f"(async () => {{\n{program}\n}})().catch((e) => {{ console.error(e); process.exit(1); }});"
    done = subprocess.run(
        ["node", "-e", wrapped], input=json.dumps(data), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"node failed: {done.stderr}")
    return json.loads(done.stdout)
