"""Byte-exact uploads to the GCS emulator for the analysis tests."""

import os
import urllib.parse
import urllib.request


def upload_tree(fs, emulator_url: str, bucket: str, prefix: str, local_dir: str) -> int:
    """Uploads every file under ``local_dir`` to ``gs://bucket/prefix/`` byte-exactly.

    Uses the JSON API's ``uploadType=media``: gcsfs's multipart uploads lose a trailing ``\r``
    or ``\n`` of the content on gcp-storage-emulator (its multipart parser strips it), which
    corrupts ~1 in 128 binary files such as TensorBoard event files. Empty files (which the
    emulator's media upload rejects) go through ``fs`` (gcsfs).
    """
    n = 0
    for dirpath, _, files in os.walk(local_dir):
        for name in files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, local_dir).replace(os.sep, "/")
            obj = urllib.parse.quote(f"{prefix}/{rel}", safe="")
            url = f"{emulator_url}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={obj}"
            with open(path, "rb") as f:
                data = f.read()
            n += 1
            if not data:
                fs.pipe_file(f"{bucket}/{prefix}/{rel}", b"")
                continue
            req = urllib.request.Request(url, data=data, method="POST",
                                         headers={"Content-Type": "application/octet-stream"})
            with urllib.request.urlopen(req, timeout=30) as resp:
                assert resp.status == 200
    return n
