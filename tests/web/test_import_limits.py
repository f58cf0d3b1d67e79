"""Caddyfile files and imports: regular files only, 1 MiB each, no secrets in messages.

Pentest finding: `import /dev/zero` took `meshkit web -validate` to gigabytes, a FIFO (as the
Caddyfile or an import) hung it, and `import /etc/shadow` quoted the hashes in the error.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from meshkit.base.errors import MeshkitError
from meshkit.web.caddyfile.load import load_file, load_text
from meshkit.web.caddyfile.parser import MAX_FILE_BYTES

MARKER = "Zq7SECRETMARKERx9"


def _limit_memory() -> None:
    # on a regression (reading /dev/zero) the child fails at 2 GiB, not at the machine's end
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def validate(conf: Path | str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshkit", "web", "-validate", "-conf", str(conf)],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=cwd,
        preexec_fn=_limit_memory,
    )


def caddyfile(tmp_path: Path, body: str) -> Path:
    f = tmp_path / "Caddyfile"
    f.write_text(body)
    return f


def test_import_dev_zero_is_refused(tmp_path: Path) -> None:
    conf = caddyfile(tmp_path, "localhost:8080 {\n    import /dev/zero\n}\n")
    out = validate(conf, tmp_path)
    assert out.returncode == 1
    assert "Caddyfile:2 - cannot import '/dev/zero': not a regular file (a character device)" in (
        out.stderr
    )
    assert "Traceback" not in out.stderr


def test_import_fifo_is_refused_not_waited_for(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "more.conf")
    conf = caddyfile(tmp_path, "localhost:8080 {\n    import more.conf\n}\n")
    out = validate(conf, tmp_path)
    assert out.returncode == 1
    assert "Caddyfile:2 - cannot import 'more.conf': not a regular file (a FIFO)" in out.stderr


def test_glob_import_skips_nothing_and_refuses_a_fifo(tmp_path: Path) -> None:
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "a.conf").write_text("gzip\n")
    os.mkfifo(tmp_path / "sites" / "b.conf")
    conf = caddyfile(tmp_path, "localhost:8080 {\n    import sites/*.conf\n}\n")
    out = validate(conf, tmp_path)
    assert out.returncode == 1
    assert "b.conf': not a regular file (a FIFO)" in out.stderr


def test_fifo_as_conf_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    out = validate(tmp_path / "fifo", tmp_path)
    assert out.returncode == 1
    assert "not a regular file (a FIFO)" in out.stderr and "Traceback" not in out.stderr


def test_conf_dev_zero_is_refused(tmp_path: Path) -> None:
    out = validate("/dev/zero", tmp_path)
    assert out.returncode == 1
    assert "'/dev/zero': not a regular file (a character device)" in out.stderr


def test_size_cap_per_file(tmp_path: Path) -> None:
    big = "# padding\n" * (MAX_FILE_BYTES // 10 + 1)
    (tmp_path / "big.conf").write_text(big)
    conf = caddyfile(tmp_path, "localhost:8080 {\n    import big.conf\n}\n")
    errors = [str(e) for e in load_file(str(conf)).errors]
    assert errors == [
        f"{conf}:2 - cannot import 'big.conf': larger than the 1 MiB limit for a Caddyfile import"
    ]
    conf.write_text(big + "localhost:8080\n")
    with pytest.raises(MeshkitError, match="larger than the 1 MiB limit for a Caddyfile"):
        load_file(str(conf))


def test_total_size_cap(tmp_path: Path) -> None:
    chunk = "# padding\n" * (MAX_FILE_BYTES // 10 - 10)
    (tmp_path / "p").mkdir()
    for i in range(20):
        (tmp_path / "p" / f"{i:02}.conf").write_text(chunk)
    conf = caddyfile(tmp_path, "localhost:8080 {\n    import p/*.conf\n}\n")
    errors = [str(e) for e in load_file(str(conf)).errors]
    assert any("the imports already add up to the 16 MiB limit" in e for e in errors), errors


@pytest.mark.parametrize(
    "content",
    [
        # /etc/shadow-like: at top level and inside a site
        f"root:$6${MARKER}$Gx1hash:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",
        # a one-word secret, a key=value env file, a quoted token
        f"{MARKER}\n",
        f"API_TOKEN={MARKER}\nOTHER=1\n",
        f'"{MARKER} with spaces"\n',
        f"machine example.com login me password {MARKER}\n",
    ],
)
def test_import_of_a_secret_file_names_file_and_line_not_content(
    tmp_path: Path, content: str
) -> None:
    secret = tmp_path / "secret"
    secret.write_text(content)
    for body in (
        f"import {secret}\n",
        f"localhost:8080 {{\n    import {secret}\n}}\n",
        f"localhost:8080 {{\n    header / {{\n        import {secret}\n    }}\n}}\n",
        f"localhost:8080 {{\n    redir {{\n        import {secret}\n    }}\n}}\n",
        f"localhost:8080 {{\n    basicauth / u p {{\n        import {secret}\n    }}\n}}\n",
    ):
        conf = caddyfile(tmp_path, body)
        out = validate(conf, tmp_path)
        assert MARKER not in out.stderr, (body, out.stderr)
        assert "Traceback" not in out.stderr
        if out.returncode == 0:
            # a lone word at the top level is a valid site address: nothing is reported
            assert out.stdout == "Caddyfile is valid\n"
        else:
            assert f"{secret}:" in out.stderr, (body, out.stderr)


def test_binary_import_is_refused_without_content(tmp_path: Path) -> None:
    # NUL-separated, like /proc/self/environ
    (tmp_path / "environ").write_bytes(f"HOME=/root\0SECRET={MARKER}\0".encode())
    conf = caddyfile(tmp_path, "localhost:8080 {\n    import environ\n}\n")
    out = validate(conf, tmp_path)
    assert out.returncode == 1
    assert "cannot import 'environ': not a Caddyfile (binary data" in out.stderr
    assert MARKER not in out.stderr


def test_proc_self_environ_import(tmp_path: Path) -> None:
    conf = caddyfile(tmp_path, "localhost:8080 {\n    import /proc/self/environ\n}\n")
    out = subprocess.run(
        [sys.executable, "-m", "meshkit", "web", "-validate", "-conf", str(conf)],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=tmp_path,
        env={"MARKER_VAR": MARKER, **os.environ},  # first: in the first token
    )
    assert out.returncode == 1
    assert MARKER not in out.stderr
    assert "/proc/self/environ" in out.stderr


def test_real_imported_caddyfiles_keep_their_messages(tmp_path: Path) -> None:
    (tmp_path / "site.conf").write_text("gzip\ngzipp\nstatus 999 /x\n")
    conf = caddyfile(tmp_path, "localhost:8080 {\n    import site.conf\n}\n")
    errors = [str(e) for e in load_file(str(conf)).errors]
    assert any("site.conf:2" in e and "'gzipp'" in e for e in errors), errors
    (tmp_path / "hosts.conf").write_text("example.com {\n    gzip\n    bogus on\n}\n")
    conf.write_text("import hosts.conf\n")
    errors = [str(e) for e in load_file(str(conf)).errors]
    assert any("hosts.conf:3" in e and "'bogus'" in e for e in errors), errors


def test_main_caddyfile_text_is_still_quoted(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(f"{MARKER}\n")
    # the unknown directive is written in the main file itself: it is quoted as before
    config = load_text(
        f"localhost:8080 {{\n    import secret\n    nosuch{MARKER[:3]}\n}}\n",
        path=str(tmp_path / "Caddyfile"),
    )
    text = "\n".join(str(e) for e in config.errors)
    assert f"'nosuch{MARKER[:3]}'" in text and MARKER not in text
