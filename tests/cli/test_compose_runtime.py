"""Compose's runtime keys in a stack: deploy.resources, volumes (bind, named, tmpfs), tmpfs,
hostname, dns, dns_search, init and stop_signal become the service spec's fields."""

from __future__ import annotations

import textwrap

from meshkit.cli.stackfile import load_stack


def test_runtime_keys_are_translated() -> None:
    text = textwrap.dedent("""
        services:
          db:
            command: sleep 1
            hostname: "{{.Service.Name}}-{{.Task.Slot}}"
            dns: 192.0.2.53
            dns_search: [corp.test]
            init: true
            stop_signal: SIGINT
            tmpfs: /cache
            volumes:
              - ./conf:/etc/app:ro
              - data:/var/lib/db
              - shared:/shared
              - {type: tmpfs, target: /scratch, tmpfs: {size: 16M}}
            deploy:
              resources:
                limits: {cpus: '0.5', memory: 256M, pids: 100}
                reservations: {cpus: '0.25', memory: 128M}
        volumes:
          data: {}
          shared: {external: true}
    """)
    stack = load_stack([("/s/app.yml", text)], {}, "app", lambda p: "")
    (db,) = stack.services
    assert db["resources"] == {
        "limits": {"nano_cpus": 500_000_000, "memory_bytes": 256 << 20, "pids": 100},
        "reservations": {"nano_cpus": 250_000_000, "memory_bytes": 128 << 20},
    }
    mounts = {m["target"]: m for m in db["mounts"]}
    assert mounts["/etc/app"]["type"] == "bind" and mounts["/etc/app"]["source"] == "/s/conf"
    assert mounts["/etc/app"]["readonly"] is True
    assert mounts["/var/lib/db"]["source"] == "app_data"  # the stack's volume
    assert mounts["/shared"]["source"] == "shared"  # external: its own name
    assert mounts["/scratch"]["tmpfs_size"] == 16 << 20 and mounts["/cache"]["type"] == "tmpfs"
    assert db["hostname"] == "{{.Service.Name}}-{{.Task.Slot}}" and db["init"] is True
    assert db["dns"] == {"nameservers": ["192.0.2.53"], "search": ["corp.test"], "options": []}
    assert db["stop_signal"] == "SIGINT"
    assert not any("volumes" in w for w in stack.warnings)
