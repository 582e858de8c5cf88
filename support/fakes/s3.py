"""A real S3 API on loopback: moto's server mode (the same request handling as AWS's wire protocol, in a thread
of this process) with one bucket, for DVC remotes that must be pushed to and pulled from like a team's bucket.

    with s3_server() as (endpoint_url, bucket, env):
        # env: fake AWS credentials + region; put them in os.environ (monkeypatch) so `dvc` subprocesses see them
        ...
"""

from __future__ import annotations

import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

# fake credentials: moto accepts any; region fixed so botocore never asks ~/.aws or IMDS for one
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
            "AWS_DEFAULT_REGION": "us-east-1"}
# what else botocore reads from the environment: cleared (None) so the developer's own AWS setup (a profile, a
# session token, ~/.aws files) cannot leak into a test or send its requests to a real account
AWS_UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


@contextmanager
def s3_server(bucket: str | None = None):
    """Start moto on 127.0.0.1 (a free port chosen by the OS: port 0, so parallel tests never collide), create
    `bucket` (a fresh name when None), yield (endpoint_url, bucket, env) and stop the server at exit.

    `env` holds the fake credentials to set, plus AWS_CONFIG_FILE/AWS_SHARED_CREDENTIALS_FILE naming empty files
    (botocore rejects a missing file or /dev/null); the keys of AWS_UNSET are the ones to delete."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    home = tempfile.TemporaryDirectory(prefix="llamaduo-aws-")
    try:
        for f in ("config", "credentials"):
            (Path(home.name) / f).write_text("")
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        bucket = bucket or f"llamaduo-{uuid.uuid4().hex[:12]}"
        env = {**FAKE_AWS, "AWS_CONFIG_FILE": f"{home.name}/config", "AWS_SHARED_CREDENTIALS_FILE": f"{home.name}/credentials"}
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name=env["AWS_DEFAULT_REGION"],
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        s3.create_bucket(Bucket=bucket)
        yield endpoint, bucket, env
    finally:
        server.stop()
        home.cleanup()


def objects(endpoint: str, bucket: str, env: dict) -> list[str]:
    """The keys stored in `bucket` (to check what a push actually sent)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=env["AWS_DEFAULT_REGION"],
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))
