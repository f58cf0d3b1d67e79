"""The git directive's Caddyfile syntax, through the real loader: values, defaults, and
errors that name file:line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshkit.web.caddyfile.load import Config, load_text
from meshkit.web.directives.git import GitDirectiveConfig
from meshkit.web.gitdeploy.config import (
    DEFAULT_INTERVAL,
    ValueProblem,
    normalize_repo,
    parse_command,
    parse_interval,
    same_remote,
    valid_branch,
)
from meshkit.web.router import site_is_static


def load(text: str, root: Path) -> Config:
    return load_text(f"127.0.0.1:2015 {{\n    root {root}\n{text}\n}}\n", "Caddyfile")


def repos(text: str, root: Path) -> GitDirectiveConfig:
    config = load(text, root)
    config.raise_errors()
    cfg = config.sites[0].directives["git"]
    assert isinstance(cfg, GitDirectiveConfig)
    return cfg


def error(text: str, root: Path) -> str:
    config = load(text, root)
    assert config.errors, "expected an error"
    return str(config.errors[0])


def test_one_line_form_and_defaults(tmp_path: Path) -> None:
    cfg = repos("    git https://git.example.test/site.git", tmp_path)
    (r,) = cfg.repos
    assert r.repo == "https://git.example.test/site.git"
    assert r.path == str(tmp_path)
    assert r.branch is None and r.key is None and r.hook is None
    assert r.interval == DEFAULT_INTERVAL
    assert r.then == [] and r.then_long == []


def test_block_form_with_everything(tmp_path: Path) -> None:
    key = tmp_path / "deploy_key"
    key.write_text("not really a key\n")
    cfg = repos(
        f"""    git {{
        repo git@git.example.test:me/site.git
        path www
        branch release-1
        key {key}
        interval 90s
        hook /_deploy s3cret
        hook_type generic
        then "hugo --minify --destination public"
        then sh -c "echo done > marker"
        then_long ./rebuild-search-index
    }}""",
        tmp_path,
    )
    (r,) = cfg.repos
    assert r.repo == "git@git.example.test:me/site.git"
    assert r.path == str(tmp_path / "www")
    assert r.branch == "release-1"
    assert r.key == str(key)
    assert r.interval == 90
    assert r.hook is not None
    assert (r.hook.path, r.hook.secret, r.hook.kind) == ("/_deploy", "s3cret", "generic")
    assert r.then == [
        ["hugo", "--minify", "--destination", "public"],
        ["sh", "-c", "echo done > marker"],
    ]
    assert r.then_long == [["./rebuild-search-index"]]


def test_repo_and_path_arguments_with_a_block(tmp_path: Path) -> None:
    cfg = repos("    git github.com/me/site blog {\n        interval 3600\n    }", tmp_path)
    (r,) = cfg.repos
    assert r.repo == "https://github.com/me/site"  # Caddy v1's short form
    assert r.path == str(tmp_path / "blog")


def test_several_blocks_and_git_folders_made_internal(tmp_path: Path) -> None:
    config = load(
        "    git https://git.example.test/a.git a {\n        hook /hook-a k1\n    }\n"
        "    git https://git.example.test/b.git b {\n        hook /hook-b k2\n"
        "        hook_type github\n    }\n"
        "    git /srv/elsewhere.git /tmp-outside-root-not-served",
        tmp_path,
    )
    config.raise_errors()
    site = config.sites[0]
    cfg = site.directives["git"]
    assert [r.path for r in cfg.repos] == [
        str(tmp_path / "a"),
        str(tmp_path / "b"),
        "/tmp-outside-root-not-served",
    ]
    assert [r.hook.kind for r in cfg.repos[:2]] == ["github", "github"]
    assert site.internal == ["/a/.git/", "/b/.git/"]
    assert site_is_static(site.directives)


def test_local_repo_path_made_absolute(tmp_path: Path) -> None:
    cfg = repos("    git ./repos/site.git out", tmp_path)
    assert cfg.repos[0].repo == os.path.abspath("repos/site.git")
    (tmp_path / "bare.git").mkdir()
    rel = os.path.relpath(tmp_path / "bare.git")
    assert repos(f"    git {rel} out", tmp_path).repos[0].repo == str(tmp_path / "bare.git")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("    git", 3, "git needs a repository"),
        ("    git a b c", 3, "wrong argument count"),
        ("    git {\n        path x\n    }", 5, "git needs a repository"),
        (
            "    git r {\n        interval 4\n    }",
            4,
            "interval '4' is too short: the minimum is 5",
        ),
        ("    git r {\n        interval soon\n    }", 4, "invalid interval 'soon'"),
        ("    git r {\n        hook /h\n    }", 4, "hook needs a secret"),
        ("    git r {\n        hook h secret\n    }", 4, "must start with '/'"),
        ("    git r {\n        hook_type gitlab\n    }", 4, "unknown hook_type 'gitlab'"),
        ("    git r {\n        hook_type generic\n    }", 5, "hook_type without a hook"),
        ("    git r {\n        branch -x\n    }", 4, "invalid branch name '-x'"),
        (
            "    git r {\n        branch a b\n    }",
            4,
            "unknown git property 'b' (expecting repo, path, branch, key, interval, hook, "
            "hook_type, then or then_long) (read as an option: it follows 'branch a' on the "
            "same line)",
        ),
        ("    git r {\n        then\n    }", 4, "wrong argument count"),
        ('    git r {\n        then "echo \'oops"\n    }', 4, "cannot split command"),
        ("    git r {\n        key /nonexistent/key\n    }", 5, "key file /nonexistent/key not"),
        ("    git r {\n        pull_args --rebase\n    }", 4, "pull_args is not supported"),
        ("    git r {\n        depth 1\n    }", 4, "unknown git property 'depth'"),
        ("    git r x\n    git s x", 4, "already the checkout of the git directive on line 3"),
        (
            "    git r a {\n        hook /h k\n    }\n    git s b {\n        hook /h k\n    }",
            8,
            "hook path /h is already used by the git directive on line 3",
        ),
    ],
)
def test_errors_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    err = error(text, tmp_path)
    assert err.startswith(f"Caddyfile:{line} - "), err
    assert message in err


def test_non_empty_folder_that_is_not_a_clone_is_refused(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("hand made\n")
    err = error("    git https://git.example.test/site.git site", tmp_path)
    assert err.startswith("Caddyfile:3 - ")
    assert "is not empty and is not a git clone of https://git.example.test/site.git" in err
    (tmp_path / "file").write_text("x")
    assert "exists and is not a folder" in error("    git r file", tmp_path)


def test_empty_folder_and_existing_clone_are_fine(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "clone" / ".git").mkdir(parents=True)
    (tmp_path / "clone" / "index.html").write_text("x")
    cfg = repos("    git r empty\n    git r2 clone", tmp_path)
    assert len(cfg.repos) == 2


def test_value_rules() -> None:
    assert parse_interval("3600") == 3600
    assert parse_interval("5") == 5
    assert parse_interval("2m") == 120
    assert parse_interval("1h") == 3600
    assert parse_interval("5000ms") == 5
    for bad in ("4.9", "1m30s", "-5", "", "4999ms"):
        with pytest.raises(ValueProblem):
            parse_interval(bad)
    assert parse_command("make 'a b'  c") == ["make", "a b", "c"]
    with pytest.raises(ValueProblem, match="empty command"):
        parse_command("   ")
    assert normalize_repo("gitlab.example.test/me/site") == "https://gitlab.example.test/me/site"
    assert normalize_repo("git@host.test:me/site.git") == "git@host.test:me/site.git"
    assert normalize_repo("ssh://host.test/x") == "ssh://host.test/x"
    assert normalize_repo("/srv/site.git") == "/srv/site.git"
    assert normalize_repo("repos/site.git") == "repos/site.git"
    assert same_remote("https://h.test/a.git", "https://h.test/a/")
    assert not same_remote("https://h.test/a.git", "https://h.test/b.git")
    assert valid_branch("main") and valid_branch("release/1.2")
    for bad in ("", "-f", "a..b", "a b", "x.lock", "a:b", "/a", "a/"):
        assert not valid_branch(bad), bad
