"""The one --publish grammar (meshkit.base.publish): one answer and one text on both sides."""

from __future__ import annotations

import pytest

from meshkit.base.errors import FlagError, InvalidValue
from meshkit.base.publish import PortConfig, Publish, PublishError, parse_port_config, parse_publish


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("8080:70000", "target port 70000 is out of range 1-65535"),
        ("0:80", "published port 0 is out of range 1-65535"),
        ("a:80", "published port 'a' is not a number (expected 1-65535)"),
        ("80:80/sctp", "protocol 'sctp' is not tcp or udp"),
    ],
)
def test_ingress_and_service_say_the_same_of_the_same_mistake(text: str, reason: str) -> None:
    for parse in (parse_publish, parse_port_config):
        with pytest.raises(PublishError) as err:
            parse(text)
        assert err.value.reason == reason
        assert err.value.flag == "--publish"
        assert isinstance(err.value, InvalidValue) and isinstance(err.value, FlagError)


@pytest.mark.parametrize("text", ["8080:80/TCP", "8080:80/Tcp"])
def test_protocol_is_case_insensitive_as_in_docker(text: str) -> None:
    assert parse_publish(text) == Publish("0.0.0.0", 8080, 80, "tcp")
    assert parse_port_config(text) == PortConfig(80, 8080, "tcp")


def test_long_form_fields_and_values_are_case_insensitive_as_in_docker() -> None:
    assert parse_port_config("Published=8080,TARGET=80,protocol=UDP,mode=Host") == PortConfig(
        80, 8080, "udp", "host"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("80", PortConfig(80)),
        (":80", PortConfig(80)),
        ("80/udp", PortConfig(80, None, "udp")),
        ("protocol=udp,8080:80", PortConfig(80, 8080, "udp")),
        ("mode=host,8081:81/udp", PortConfig(81, 8081, "udp", "host")),
        ("8091:80,proxy-protocol=v2", PortConfig(80, 8091, proxy_protocol=True)),
    ],
)
def test_service_forms(text: str, expected: PortConfig) -> None:
    assert parse_port_config(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("1.2.3.4:80:80", "expected [PUBLISHED:]TARGET[/tcp|/udp]"),
        ("[::1]:80:80", "expected [PUBLISHED:]TARGET[/tcp|/udp]"),
        ("80,,mode=host", "empty field"),
        ("mode=host", "no target port"),
        ("mode=bridge,80", "mode 'bridge' is not ingress or host"),
        ("80,colour=red", "unknown field 'colour'"),
        ("80,proxy-protocol=v1", "use proxy-protocol=v2"),
    ],
)
def test_service_form_errors(text: str, reason: str) -> None:
    with pytest.raises(PublishError) as err:
        parse_port_config(text, "--publish-add")
    assert reason in err.value.reason
    assert err.value.flag == "--publish-add"


def test_ingress_needs_the_published_port() -> None:
    with pytest.raises(PublishError, match=r"expected \[IP:\]PUBLISHED:TARGET"):
        parse_publish("80")
