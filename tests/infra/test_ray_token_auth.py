"""Ray token authentication, as infra/ turns it on (RAY_AUTH_MODE=token + RAY_AUTH_TOKEN), on a
real loopback-only head of the pinned Ray: a caller without the token, or with another one, is
refused; `ray job submit` with it runs.

The head: tests/rayhead.py (its own process group, stopped by killing that group).
"""

from __future__ import annotations

import secrets
import subprocess

import pytest
from rayhead import BIN, http_status, ray_head


@pytest.mark.slow
def test_token_auth_refuses_callers_without_the_token(tmp_path, subprocess_env):
    token = secrets.token_hex(16)
    env = dict(subprocess_env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    with ray_head(env, num_cpus=1, token=token) as address:
        # the job API (what `ray job submit` and anyone on the network would call)
        assert http_status(f"{address}/api/jobs/", token) == 200
        assert http_status(f"{address}/api/jobs/", None) in (401, 403)
        assert http_status(f"{address}/api/jobs/", "not-" + token) in (401, 403)

        def submit(tok: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(BIN / "ray"), "job", "submit", "--", "python", "-c", "print('token ok')"],
                cwd=tmp_path, env=dict(env, RAY_API_SERVER_ADDRESS=address, RAY_AUTH_TOKEN=tok),
                capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip

        bad = submit("not-" + token)
        assert bad.returncode != 0 and "token ok" not in bad.stdout
        good = submit(token)
        assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-3000:]
        assert "token ok" in good.stdout and "succeeded" in good.stdout.lower()
