"""A team's shared storage, for real: a git + DVC project pushes each cycle's outputs to an S3 bucket (moto's server
on loopback); a clone elsewhere pulls them and gets any cycle back byte for byte."""

import hashlib
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fakes.s3 import AWS_UNSET, objects, s3_server
from llamaduo.cycle import remote
from llamaduo.errors import LoopError
from llamaduo.urls import mask_url

# the one stage writes an "adapter" folder whose bytes depend on the param, as training's output does
STAGE = """\
import hashlib, pathlib, yaml
n = yaml.safe_load(open("params.yaml"))["train"]["seed"]
out = pathlib.Path("models/adapter"); out.mkdir(parents=True, exist_ok=True)
(out / "adapter_model.safetensors").write_bytes(b"".join(hashlib.sha256(f"{n}-{i}".encode()).digest() for i in range(2048)))
(out / "adapter_config.json").write_text('{"seed": %d}' % n)
"""


def sh(*cmd: str, cwd: Path) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{cmd}: {done.stderr[-3000:]}"
    return done.stdout


def dvc(*args: str, cwd: Path) -> str:
    return sh(sys.executable, "-m", "dvc", *args, cwd=cwd)


def git(*args: str, cwd: Path) -> str:
    return sh("git", "-c", "user.name=t", "-c", "user.email=t@t", *args, cwd=cwd)


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def env(monkeypatch):
    """An environment of our own: no analytics calls home, and none of the developer's AWS setup."""
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    for key in AWS_UNSET:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def project(path: Path) -> Path:
    path.mkdir()
    git("init", "-q", "-b", "main", cwd=path)
    dvc("init", "-q", cwd=path)
    (path / "make_adapter.py").write_text(STAGE)
    (path / "params.yaml").write_text("train:\n  seed: 1\n")
    (path / "dvc.yaml").write_text(f"stages:\n  train:\n    cmd: {sys.executable} make_adapter.py\n    deps: [make_adapter.py]\n"
                                   "    params: [train.seed]\n    outs: [models/adapter]\n")
    return path


def test_two_cycles_pushed_then_a_clone_restores_cycle_one_byte_for_byte(tmp_path, env):
    with s3_server() as (endpoint, bucket, aws):
        for k, v in aws.items():
            env.setenv(k, v)
        proj = project(tmp_path / "proj")
        env.chdir(proj)
        assert remote.default_remote() is None and remote.push() == {"remote": None, "pushed": False}
        # the remote (and its endpoint) is committed project config, so a clone knows it; the keys stay in env
        dvc("remote", "add", "-d", "team", f"s3://{bucket}/llamaduo", cwd=proj)
        dvc("remote", "modify", "team", "endpointurl", endpoint, cwd=proj)
        assert remote.default_remote() == "team"

        commits, digests, stored = [], [], []
        for seed in (1, 2):  # two "cycles": new params, repro, commit, push
            (proj / "params.yaml").write_text(f"train:\n  seed: {seed}\n")
            dvc("repro", "-q", cwd=proj)
            git("add", "-A", cwd=proj)
            git("commit", "-q", "-m", f"cycle {seed}", cwd=proj)
            commits.append(git("rev-parse", "HEAD", cwd=proj).strip())
            digests.append(digest(proj / "models" / "adapter"))
            result = remote.push(jobs=2)
            assert result["remote"] == "team" and result["pushed"] is True and result["seconds"] > 0
            stored.append(objects(endpoint, bucket, aws))
        assert digests[0] != digests[1]  # the param really changed the output
        # cycle 2 added its two new files (+ the folder's .dir manifest) beside cycle 1's, which stay
        assert set(stored[0]) < set(stored[1]) and len(stored[1]) - len(stored[0]) == 3

        clone = tmp_path / "clone"
        git("clone", "-q", str(proj), str(clone), cwd=tmp_path)
        assert not (clone / ".dvc" / "cache").exists()  # everything below comes from the bucket
        dvc("pull", "-q", "--all-commits", cwd=clone)
        assert digest(clone / "models" / "adapter") == digests[1]
        git("checkout", "-q", commits[0], cwd=clone)
        dvc("checkout", "-q", cwd=clone)
        assert digest(clone / "models" / "adapter") == digests[0]
        assert (clone / "models" / "adapter" / "adapter_config.json").read_text() == '{"seed": 1}'


def test_an_unreachable_remote_is_a_loop_error_naming_it_and_keeping_secrets(tmp_path, env):
    with socket.socket() as s:  # a port nothing listens on: connection refused, at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proj = tmp_path / "proj"
    proj.mkdir()
    git("init", "-q", cwd=proj)
    dvc("init", "-q", cwd=proj)
    (proj / "data.txt").write_text("cycle output\n")
    dvc("add", "-q", "data.txt", cwd=proj)
    dvc("remote", "add", "-d", "offline", "s3://nowhere/llamaduo", cwd=proj)
    dvc("remote", "modify", "offline", "endpointurl", f"http://127.0.0.1:{port}", cwd=proj)
    # credentials as a user keeps them: in the git-ignored config.local; they must not appear in the message
    dvc("remote", "modify", "--local", "offline", "access_key_id", "AKIDSHOULDNOTSHOW", cwd=proj)
    dvc("remote", "modify", "--local", "offline", "secret_access_key", "sekret-should-not-show", cwd=proj)
    env.chdir(proj)
    env.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's retries would only make the refused connection slower
    with pytest.raises(LoopError) as err:
        remote.push()
    msg = str(err.value)
    assert "remote 'offline' (s3://nowhere/llamaduo)" in msg and "rerun `dvc push`" in msg
    assert "AKIDSHOULDNOTSHOW" not in msg and "sekret-should-not-show" not in msg


def test_a_remote_url_is_printed_without_its_credentials():
    # the rule every URL the project prints follows (llamaduo.urls.mask_url): userinfo and secret query values
    assert mask_url("https://bob:hunter2@dvc.example.com:8443/store") == "https://***@dvc.example.com:8443/store"
    assert mask_url("azure://container/path?sig=abc123&sv=2024") == "azure://container/path?sig=***&sv=2024"
    assert mask_url("s3://bucket/path") == "s3://bucket/path"
