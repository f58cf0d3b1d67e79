"""A compose file's top-level network keys that map to `network create` flags:
`attachable: true` -> --attachable, `internal: true` -> --internal; anything but a boolean
is an error naming the file, line and key; no warning is left for either."""

from __future__ import annotations

from cli.test_stackfile import error, load


def _request(stack, key: str) -> dict:
    return next(n.request for n in stack.networks if n.key == key)


def test_attachable_and_internal_become_network_create_flags() -> None:
    stack = load(
        """
        services:
          web: {command: ["sleep", "60"], networks: [front, back]}
        networks:
          front: {attachable: true}
          back: {internal: true, attachable: false}
        """
    )
    front, back = _request(stack, "front"), _request(stack, "back")
    assert front["name"] == "app_front" and front["attachable"] is True
    assert "internal" not in front
    assert back["internal"] is True and "attachable" not in back
    assert not [w for w in stack.warnings if "attachable" in w]


def test_a_flag_that_is_not_a_boolean_is_named() -> None:
    says = error(
        """
        services:
          web: {command: ["sleep", "60"], networks: [front]}
        networks:
          front:
            attachable: "yes"
        """
    )
    assert "networks.front.attachable" in says and "expected true or false" in says
    assert "f0.yml:6" in says
